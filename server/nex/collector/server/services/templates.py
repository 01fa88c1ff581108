"""Use cases of TemplateService."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.errors import Violations, require
from nex.collector.server.domain.sizes import template_bytes
from nex.collector.server.domain.templates import (
    PromptTemplate,
    TemplateEngine,
    check_template_length,
    check_variable_names,
)
from nex.collector.server.domain.validation import check_id, check_request_id, check_required
from nex.collector.server.ids import new_id
from nex.collector.server.services.clock import now
from nex.collector.server.services.context_refs import usable_ref
from nex.collector.server.services.pages import list_page


@dataclass(frozen=True, slots=True)
class NewTemplate:
    name: str
    system_template: str
    user_template: str
    variables: Sequence[str]
    context_ref_id: str = ""
    request_id: str = ""


class Templates:
    def __init__(
        self, uow: UnitOfWorkFactory, engine: TemplateEngine, *, integrated: bool = False
    ) -> None:
        self._uow = uow
        self._engine = engine
        self._integrated = integrated

    async def create(self, cmd: NewTemplate) -> PromptTemplate:
        v = Violations()
        check_required(v, "name", cmd.name)
        check_variable_names(v, "variables", cmd.variables)
        sources: list[tuple[str, str]] = []
        if not cmd.user_template.strip():
            v.add("user_template", "is required")
        elif check_template_length(v, "user_template", cmd.user_template):
            sources.append(("user_template", cmd.user_template))
        if cmd.system_template and check_template_length(v, "system_template", cmd.system_template):
            sources.append(("system_template", cmd.system_template))
        check_id(v, "context_ref_id", cmd.context_ref_id, required=False)
        check_request_id(v, "request_id", cmd.request_id)
        # Parsing and compiling run in the sandbox: Jinja folds constants while
        # compiling, and a constant can cost minutes of CPU.
        v.extend(await self._engine.check(sources, cmd.variables))
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
            id_of=lambda t: t.id,
        )
