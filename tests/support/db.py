"""Direct reads of the collector's database, for assertions a client cannot make
(what is stored, and what is not)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from nex.collector.server.bootstrap import plain_dsn
from nex.collector.server.testing import CollectorEnvironment


async def _fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


def fetch_all(collector: CollectorEnvironment, query: str, *args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = collector.call(
        _fetch(plain_dsn(collector.container.database_url), query, *args)
    )
    return rows


async def _execute(dsn: str, query: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


def execute(collector: CollectorEnvironment, query: str, *args: Any) -> None:
    collector.call(_execute(plain_dsn(collector.container.database_url), query, *args))


def fetch_from(database_url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """A read of the database at ``database_url`` (no collector needed); not
    from inside a running event loop."""
    return asyncio.run(_fetch(plain_dsn(database_url), query, *args))
