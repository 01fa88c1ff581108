"""Use cases of TemplateService."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.sizes import template_bytes
from nex.collector.server.domain.templates import (
    PromptTemplate,
    check_template_source,
    check_variable_names,
)
from nex.collector.server.domain.validation import check_request_id, check_required
from nex.collector.server.ids import new_id
from nex.collector.server.services.common import check_id, list_page, now, require
from nex.collector.server.services.context_refs import usable_ref


@dataclass(frozen=True, slots=True)
class NewTemplate:
    name: str
    system_template: str
    user_template: str
    variables: Sequence[str]
    context_ref_id: str = ""
    request_id: str = ""


class Templates:
    def __init__(self, uow: UnitOfWorkFactory, *, integrated: bool = False) -> None:
        self._uow = uow
        self._integrated = integrated

    async def create(self, cmd: NewTemplate) -> PromptTemplate:
        v = Violations()
        check_required(v, "name", cmd.name)
        check_variable_names(v, "variables", cmd.variables)
        if not cmd.user_template.strip():
            v.add("user_template", "is required")
        else:
            check_template_source(v, "user_template", cmd.user_template, cmd.variables)
        if cmd.system_template:
            check_template_source(v, "system_template", cmd.system_template, cmd.variables)
        check_id(v, "context_ref_id", cmd.context_ref_id, required=False)
        check_request_id(v, "request_id", cmd.request_id)
        v.raise_if_any()
        async with self._uow() as tx:
            if cmd.request_id and (found := await tx.templates.get_by_request_id(cmd.request_id)):
                return found
            if cmd.context_ref_id:
                usable_ref(
                    await tx.context_refs.get(cmd.context_ref_id),
                    cmd.context_ref_id,
                    integrated=self._integrated,
                )
            template = PromptTemplate(
                id=new_id("tpl"),
                name=cmd.name,
                version=await tx.templates.next_version(cmd.name),
                system_template=cmd.system_template,
                user_template=cmd.user_template,
                variables=tuple(cmd.variables),
                context_ref_id=cmd.context_ref_id or None,
                create_time=now(),
            )
            if not await tx.templates.insert(template, cmd.request_id):
                await tx.rollback()
                return require(
                    await tx.templates.get_by_request_id(cmd.request_id), "template", cmd.request_id
                )
            await tx.commit()
            return template

    async def get(self, id_: str) -> PromptTemplate:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return require(await tx.templates.get(id_), "template", id_)

    async def list(
        self, *, name: str, page_size: int, page_token: str
    ) -> tuple[Sequence[PromptTemplate], str]:
        return await list_page(
            self._uow,
            f"templates|{name}",
            page_size,
            page_token,
            lambda tx, page: tx.templates.page(page, name=name),
            size_of=template_bytes,
        )
