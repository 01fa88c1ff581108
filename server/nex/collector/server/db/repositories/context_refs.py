from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import context_refs
from nex.collector.server.domain.context_refs import ContextRef
from nex.collector.server.domain.pagination import PageRequest


def _entity(row: Mapping[Any, Any]) -> ContextRef:
    return ContextRef(
        id=row["id"],
        nex_context_id=row["nex_context_id"],
        nex_context_version=row["nex_context_version"],
        labels=dict(row["labels"]),
        create_time=row["create_time"],
        confirm_time=row["confirm_time"],
    )


class ContextRefRepository(Repository):
    """References to NEX contexts."""

    table = context_refs

    async def get(self, id_: str) -> ContextRef | None:
        """The reference with this id, or None."""
        row = await self._one(select(context_refs).where(context_refs.c.id == id_))
        return _entity(row) if row else None

    async def find(
        self, *, request_id: str = "", nex_context_id: str = "", nex_context_version: str = ""
    ) -> ContextRef | None:
        """By request id, else by (nex_context_id, nex_context_version)."""
        if request_id:
            row = await self._one(
                select(context_refs).where(context_refs.c.request_id == request_id)
            )
            if row:
                return _entity(row)
        if nex_context_id:
            row = await self._one(
                select(context_refs).where(
                    context_refs.c.nex_context_id == nex_context_id,
                    context_refs.c.nex_context_version == nex_context_version,
                )
            )
            if row:
                return _entity(row)
        return None

    async def insert(self, ref: ContextRef, request_id: str) -> bool:
        """False when a concurrent create won (same request id or NEX context version)."""
        stmt = (
            insert(context_refs)
            .values(
                id=ref.id,
                nex_context_id=ref.nex_context_id,
                nex_context_version=ref.nex_context_version,
                labels=ref.labels,
                request_id=request_id or None,
                create_time=ref.create_time,
                confirm_time=ref.confirm_time,
            )
            .on_conflict_do_nothing()
            .returning(context_refs.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def confirm(self, id_: str, when: datetime) -> None:
        """Records when NEX confirmed the context; only the first time counts."""
        await self.session.execute(
            update(context_refs)
            .where(context_refs.c.id == id_, context_refs.c.confirm_time.is_(None))
            .values(confirm_time=when)
        )

    async def page(
        self, page: PageRequest, *, nex_context_id: str = ""
    ) -> tuple[Sequence[ContextRef], str | None]:
        """One page in id order, of one NEX context's references when named."""
        stmt = select(context_refs)
        if nex_context_id:
            stmt = stmt.where(context_refs.c.nex_context_id == nex_context_id)
        rows, next_key = await self._page(stmt, page, context_refs.c.id)
        return [_entity(r) for r in rows], next_key
