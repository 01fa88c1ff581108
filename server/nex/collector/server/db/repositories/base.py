"""What every repository shares: the session, keyset pages, lookups by request id."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, Select, Table
from sqlalchemy.ext.asyncio import AsyncSession

from nex.collector.server.domain.pagination import PageRequest


class Repository:
    """Base of the table repositories: one unit of work's session, one-row lookups
    and keyset pages."""

    table: Table

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _one(self, stmt: Select[Any]) -> RowMapping | None:
        row: RowMapping | None = (await self.session.execute(stmt)).mappings().first()
        return row

    async def _page(
        self, stmt: Select[Any], page: PageRequest, key: ColumnElement[Any]
    ) -> tuple[Sequence[RowMapping], str | None]:
        """Rows of one page ordered by `key`, and the key to continue after (or None)."""
        if page.after is not None:
            stmt = stmt.where(key > page.after)
        rows = (
            (await self.session.execute(stmt.order_by(key).limit(page.size + 1))).mappings().all()
        )
        if len(rows) > page.size:
            rows = rows[: page.size]
            return rows, str(rows[-1][key.key])
        return rows, None
