"""The SQLAlchemy engine every unit of work runs on.

A pooled connection is checked before use only when it sat idle for a while:
SQLAlchemy's `pool_pre_ping` checks it at every checkout, and on asyncpg its
check is three round trips (BEGIN, an empty query, ROLLBACK), more than the
micro-batched transactions of a busy worker spend on their own statements. A
connection back in the pool within IDLE_PING_S was just used successfully;
one PostgreSQL dropped since (a restart, a failover) fails its next statement,
and SQLAlchemy then replaces every connection of the pool older than it (the
caller sees UNAVAILABLE with RetryInfo; the shipped client retries it)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# A connection idle longer than this is checked before it is handed out.
IDLE_PING_S = 1.0
_IDLE_SINCE = "nex_idle_since"


def make_engine(database_url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    # LIFO: under load the same few connections go round within milliseconds (never
    # checked), while the rest age out of use.
    engine = create_async_engine(
        database_url, pool_size=pool_size, max_overflow=max_overflow, pool_use_lifo=True
    )
    event.listen(engine.sync_engine, "checkin", _checked_in)
    event.listen(engine.sync_engine, "checkout", _checked_out)
    return engine


def _checked_in(dbapi_connection: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    since = record.info.get(_IDLE_SINCE)
    if since is None or time.monotonic() - since <= IDLE_PING_S:
        return  # new, or just used
    try:
        dbapi_connection.ping()
    except Exception as err:  # the pool drops it and checks out another
        raise exc.DisconnectionError(f"pooled connection is gone: {err}") from err
