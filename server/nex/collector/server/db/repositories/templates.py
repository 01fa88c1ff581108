from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.locks import TEMPLATE_NAME_SEED
from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import templates
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.templates import PromptTemplate


def _entity(row: Mapping[Any, Any]) -> PromptTemplate:
    return PromptTemplate(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        system_template=row["system_template"],
        user_template=row["user_template"],
        variables=tuple(row["variables"]),
        context_ref_id=row["context_ref_id"],
        create_time=row["create_time"],
    )


class TemplateRepository(Repository):
    """Prompt templates, versioned by name."""

    table = templates

    async def get(self, id_: str) -> PromptTemplate | None:
        """The template with this id, or None."""
        row = await self._one(select(templates).where(templates.c.id == id_))
        return _entity(row) if row else None

    async def get_by_request_id(self, request_id: str) -> PromptTemplate | None:
        """The template an earlier create with this request id made (idempotent
        retries)."""
        row = await self._one(select(templates).where(templates.c.request_id == request_id))
        return _entity(row) if row else None

    async def next_version(self, name: str) -> int:
        """The next version of `name`; holds a transaction lock on the name so
        concurrent creates of one name get consecutive versions."""
        await self.session.execute(
            text(f"SELECT pg_advisory_xact_lock(hashtextextended(:name, {TEMPLATE_NAME_SEED}))"),
            {"name": name},
        )
        current = (
            await self.session.execute(
                select(func.coalesce(func.max(templates.c.version), 0)).where(
                    templates.c.name == name
                )
            )
        ).scalar_one()
        return int(current) + 1

    async def insert(self, template: PromptTemplate, request_id: str) -> bool:
        """Stores the template; False when a create with the same request id won."""
        stmt = (
            insert(templates)
            .values(
                id=template.id,
                name=template.name,
                version=template.version,
                system_template=template.system_template,
                user_template=template.user_template,
                variables=list(template.variables),
                context_ref_id=template.context_ref_id,
                request_id=request_id or None,
                create_time=template.create_time,
            )
            .on_conflict_do_nothing(index_elements=[templates.c.request_id])
            .returning(templates.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def page(
        self, page: PageRequest, *, name: str = ""
    ) -> tuple[Sequence[PromptTemplate], str | None]:
        """One page in id order, of one name's versions when named."""
        stmt = select(templates)
        if name:
            stmt = stmt.where(templates.c.name == name)
        rows, next_key = await self._page(stmt, page, templates.c.id)
        return [_entity(r) for r in rows], next_key
