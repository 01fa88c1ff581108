from __future__ import annotations

from nex.collector.server.api import convert
from nex.collector.server.api.types import Context
from nex.collector.server.services.evidence import Evidence, NewEvidenceLink
from nex.collector.v1 import evidence_service_pb2 as pb
from nex.collector.v1 import evidence_service_pb2_grpc as pb_grpc


class EvidenceServicer(pb_grpc.EvidenceServiceServicer):
    """EvidenceService over the Evidence use cases (integrated mode)."""

    def __init__(self, evidence: Evidence) -> None:
        self._evidence = evidence

    async def CreateEvidenceLink(
        self, request: pb.CreateEvidenceLinkRequest, context: Context
    ) -> pb.CreateEvidenceLinkResponse:
        """Records a link for delivery to NEX (idempotent by request id)."""
        link = await self._evidence.create(
            NewEvidenceLink(
                context_ref_id=request.context_ref_id,
                dataset_id=request.dataset_id,
                run_id=request.run_id,
                kind=request.kind,
                note=request.note,
                request_id=request.request_id,
            )
        )
        return pb.CreateEvidenceLinkResponse(evidence_link=convert.evidence_link(link))

    async def GetEvidenceLink(
        self, request: pb.GetEvidenceLinkRequest, context: Context
    ) -> pb.GetEvidenceLinkResponse:
        """One link, with its delivery state, by id."""
        return pb.GetEvidenceLinkResponse(
            evidence_link=convert.evidence_link(await self._evidence.get(request.id))
        )

    async def ListEvidenceLinks(
        self, request: pb.ListEvidenceLinksRequest, context: Context
    ) -> pb.ListEvidenceLinksResponse:
        """A page of links, of one context reference when named."""
        items, token = await self._evidence.list(
            context_ref_id=request.context_ref_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListEvidenceLinksResponse(
            evidence_links=[convert.evidence_link(x) for x in items], next_page_token=token
        )
