"""The real PostgreSQL and Redis the tests run against: the servers named by
DATABASE_URL / REDIS_URL when set, else embedded ones in a temporary folder.
Each collector a test starts gets a database and a Redis database of its own,
so collectors with different settings never take each other's jobs."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import redis

from nex.collector.server.embedded import start_embedded

_REDIS_DBS_IN_USE: set[int] = set()  # Redis has 16 databases; 0 is left alone


@dataclass(frozen=True)
class Backing:
    database_url: str  # postgresql+asyncpg://…, a database of its own
    redis_url: str  # a Redis database of its own, flushed when made
    embedded: bool
    _server_url: str = field(repr=False, default="")
    _redis_server_url: str = field(repr=False, default="")

    @contextmanager
    def isolated(self) -> Iterator[Backing]:
        """Another fresh database and Redis database on the same servers."""
        with _fresh(self._server_url, self._redis_server_url, self.embedded) as other:
            yield other


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _with_redis_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":  # unix:///path/redis.socket?db=N (urlunsplit drops the //)
        query = dict(parse_qsl(parts.query))
        query["db"] = str(db)
        return f"unix://{parts.path}?{urlencode(query)}"
    return urlunsplit(parts._replace(path=f"/{db}"))


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_plain(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def _fresh(database_server: str, redis_server: str, embedded: bool) -> Iterator[Backing]:
    name = f"nexc_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(database_server, f'CREATE DATABASE "{name}"'))
    db = min(set(range(1, 16)) - _REDIS_DBS_IN_USE)  # never one a live collector uses
    _REDIS_DBS_IN_USE.add(db)
    redis_url = _with_redis_db(redis_server, db)
    redis.Redis.from_url(redis_url).flushdb()
    try:
        yield Backing(
            _with_database(database_server, name),
            redis_url,
            embedded,
            database_server,
            redis_server,
        )
    finally:
        _REDIS_DBS_IN_USE.discard(db)
        asyncio.run(_admin(database_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def backing_services(tmp: Path) -> Iterator[Backing]:
    """The servers from DATABASE_URL / REDIS_URL, or embedded ones in `tmp`."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    embedded = None
    if not database_url or not redis_url:
        embedded = start_embedded(tmp / "embedded")
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    try:
        with _fresh(database_url, redis_url, embedded is not None) as backing:
            yield backing
    finally:
        if embedded is not None:
            embedded.stop()
