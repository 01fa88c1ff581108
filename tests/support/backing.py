"""The real PostgreSQL and Redis the tests run against: the servers named by
DATABASE_URL / REDIS_URL when set, else embedded ones in a temporary folder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from nex.collector.server.embedded import start_embedded


@dataclass(frozen=True)
class Backing:
    database_url: str  # postgresql+asyncpg://…, a database of this test session's own
    redis_url: str
    embedded: bool


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_plain(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_plain(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextmanager
def backing_services(tmp: Path) -> Iterator[Backing]:
    """A fresh database on the chosen PostgreSQL, and a Redis database to flush."""
    import asyncio

    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    embedded = None
    if not database_url or not redis_url:
        embedded = start_embedded(tmp / "embedded")
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    name = f"nexc_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_database(database_url, name))
    try:
        yield Backing(_with_database(database_url, name), redis_url, embedded is not None)
    finally:
        asyncio.run(_drop_database(database_url, name))
        if embedded is not None:
            embedded.stop()
