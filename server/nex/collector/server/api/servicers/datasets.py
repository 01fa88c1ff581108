from __future__ import annotations

from collections.abc import AsyncIterator

from nex.collector.server.api import convert
from nex.collector.server.api.types import Context
from nex.collector.server.domain.errors import InvalidArgument, Violations
from nex.collector.server.domain.filters import Filter
from nex.collector.server.domain.limits import MAX_VIOLATIONS
from nex.collector.server.services.datasets import Datasets, NewDataset
from nex.collector.v1 import dataset_service_pb2 as pb
from nex.collector.v1 import dataset_service_pb2_grpc as pb_grpc


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    """DatasetService over the Datasets use cases."""

    def __init__(self, datasets: Datasets) -> None:
        self._datasets = datasets

    async def BuildDataset(
        self, request: pb.BuildDatasetRequest, context: Context
    ) -> pb.BuildDatasetResponse:
        """Validates every filter (all bad ones reported together), stores the
        manifest as BUILDING and returns it; a worker builds the files."""
        v = Violations()
        filters: list[Filter] = []
        for i, f in enumerate(request.filters):
            try:
                filters.append(convert.filter_from_pb(f, f"filters[{i}]"))
            except InvalidArgument as exc:
                v.extend(exc.violations)
        v.raise_if_any()
        dataset = await self._datasets.build(
            NewDataset(
                name=request.name,
                version=request.version,
                batch_ids=list(request.batch_ids),
                filters=filters,
                request_id=request.request_id,
                context_ref_id=request.context_ref_id,
                link_evidence=request.link_evidence,
                allow_empty=request.allow_empty,
                parts=request.parts,
            )
        )
        return pb.BuildDatasetResponse(dataset=convert.dataset(dataset))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        """One dataset's manifest by id."""
        return pb.GetDatasetResponse(dataset=convert.dataset(await self._datasets.get(request.id)))

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> pb.ListDatasetsResponse:
        """A page of datasets, of one name when named."""
        items, token = await self._datasets.list(
            name=request.name, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset(d) for d in items], next_page_token=token
        )

    async def ReadDataset(
        self, request: pb.ReadDatasetRequest, context: Context
    ) -> AsyncIterator[pb.ReadDatasetResponse]:
        """Streams one file of a READY dataset as Arrow IPC messages: the schema
        first, then record batches."""
        async for message, rows in self._datasets.read(
            request.dataset_id,
            file=request.file,
            columns=list(request.columns),
            offset=request.offset,
            limit=request.limit,
        ):
            yield pb.ReadDatasetResponse(arrow_ipc=message, rows=rows)

    async def VerifyDataset(
        self, request: pb.VerifyDatasetRequest, context: Context
    ) -> pb.VerifyDatasetResponse:
        """Rechecks the stored files against the manifest; the problems found, the
        first MAX_VIOLATIONS of them and how many more."""
        dataset, problems = await self._datasets.verify(request.id)
        shown = list(problems[:MAX_VIOLATIONS])
        if len(problems) > len(shown):
            shown.append(f"and {len(problems) - len(shown)} more problems")
        return pb.VerifyDatasetResponse(dataset=convert.dataset(dataset), problems=shown)
