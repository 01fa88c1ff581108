"""Background tasks that never die silently: a crash is logged with its traceback,
then the task restarts after a growing pause, or the process stops. Every
long-running task of a process (reconciler, backlog gauges, LISTEN listener,
worker loop) is started through `supervise`.

A dependency that is briefly away (PostgreSQL or Redis restarting) is not a
crash: that is logged as one warning line, and the task restarts the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError

from nex.collector.server import metrics

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says PostgreSQL or Redis cannot be reached right now."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig  # SQLAlchemy's adapter error; the driver's is its cause
        return orig is not None and (
            is_outage(orig) or (orig.__cause__ is not None and is_outage(orig.__cause__))
        )
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | RedisConnectionError
        | RedisTimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.InterfaceError,
    )


async def supervised(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    restart: bool = True,
    first_backoff_s: float = FIRST_BACKOFF_S,
    max_backoff_s: float = MAX_BACKOFF_S,
) -> None:
    """Runs `body` until it returns or `stop` is set. When it raises: logs the
    traceback, then runs it again after a pause (doubling up to `max_backoff_s`,
    back to the first once it ran that long without crashing) or, with
    `restart=False`, sets `stop` so the whole process shuts down."""
    loop = asyncio.get_running_loop()
    backoff = first_backoff_s
    while not stop.is_set():
        started = loop.time()
        try:
            await body()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not restart:
                metrics.TASK_CRASHES.labels(name).inc()
                log.exception("background task %s crashed; stopping the process", name)
                stop.set()
                return
            if loop.time() - started >= max_backoff_s:
                backoff = first_backoff_s
            if is_outage(exc):
                log.warning("%s: %s; retrying in %.1f s", name, _describe(exc), backoff)
            else:
                metrics.TASK_CRASHES.labels(name).inc()
                log.exception("background task %s crashed; restarting in %.1f s", name, backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, max_backoff_s)


def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    stop: asyncio.Event,
    restart: bool = True,
) -> asyncio.Task[None]:
    """Starts `supervised(name, body, …)` as a task named `name`."""
    return asyncio.create_task(supervised(name, body, stop=stop, restart=restart), name=name)


def _describe(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"
