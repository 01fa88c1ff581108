from __future__ import annotations

from nex.collector.server.api import convert
from nex.collector.server.api.types import Context
from nex.collector.server.services.templates import NewTemplate, Templates
from nex.collector.v1 import template_service_pb2 as pb
from nex.collector.v1 import template_service_pb2_grpc as pb_grpc


class TemplateServicer(pb_grpc.TemplateServiceServicer):
    """TemplateService over the Templates use cases."""

    def __init__(self, templates: Templates) -> None:
        self._templates = templates

    async def CreateTemplate(
        self, request: pb.CreateTemplateRequest, context: Context
    ) -> pb.CreateTemplateResponse:
        """Checks the template compiles and stores it as the next version of its
        name (idempotent by request id)."""
        created = await self._templates.create(
            NewTemplate(
                name=request.name,
                system_template=request.system_template,
                user_template=request.user_template,
                variables=list(request.variables),
                context_ref_id=request.context_ref_id,
                request_id=request.request_id,
            )
        )
        return pb.CreateTemplateResponse(template=convert.template(created))

    async def GetTemplate(
        self, request: pb.GetTemplateRequest, context: Context
    ) -> pb.GetTemplateResponse:
        """One template version by id."""
        return pb.GetTemplateResponse(
            template=convert.template(await self._templates.get(request.id))
        )

    async def ListTemplates(
        self, request: pb.ListTemplatesRequest, context: Context
    ) -> pb.ListTemplatesResponse:
        """A page of templates, of one name's versions when named."""
        items, token = await self._templates.list(
            name=request.name, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListTemplatesResponse(
            templates=[convert.template(t) for t in items], next_page_token=token
        )
