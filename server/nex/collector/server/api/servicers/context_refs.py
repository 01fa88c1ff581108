from __future__ import annotations

from nex.collector.server.api import convert
from nex.collector.server.api.types import Context
from nex.collector.server.services.context_refs import ContextRefs, NewContextRef
from nex.collector.v1 import context_ref_service_pb2 as pb
from nex.collector.v1 import context_ref_service_pb2_grpc as pb_grpc


class ContextRefServicer(pb_grpc.ContextRefServiceServicer):
    """ContextRefService over the ContextRefs use cases."""

    def __init__(self, context_refs: ContextRefs) -> None:
        self._refs = context_refs

    async def CreateContextRef(
        self, request: pb.CreateContextRefRequest, context: Context
    ) -> pb.CreateContextRefResponse:
        """Registers a NEX context; the same context version, or request id, again
        returns the existing reference."""
        ref = await self._refs.create(
            NewContextRef(
                nex_context_id=request.nex_context_id,
                nex_context_version=request.nex_context_version,
                labels=dict(request.labels),
                request_id=request.request_id,
            )
        )
        return pb.CreateContextRefResponse(context_ref=convert.context_ref(ref))

    async def GetContextRef(
        self, request: pb.GetContextRefRequest, context: Context
    ) -> pb.GetContextRefResponse:
        """One reference by id (NOT_FOUND when there is none)."""
        return pb.GetContextRefResponse(
            context_ref=convert.context_ref(await self._refs.get(request.id))
        )

    async def ListContextRefs(
        self, request: pb.ListContextRefsRequest, context: Context
    ) -> pb.ListContextRefsResponse:
        """A page of references, of one NEX context when named."""
        items, token = await self._refs.list(
            nex_context_id=request.nex_context_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return pb.ListContextRefsResponse(
            context_refs=[convert.context_ref(r) for r in items], next_page_token=token
        )
