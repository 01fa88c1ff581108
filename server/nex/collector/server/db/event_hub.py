"""Wake-ups for WatchRuns: the PostgreSQL NOTIFY that appending events sends,
received on one raw asyncpg LISTEN connection per process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import asyncpg

from nex.collector.server.db.repositories.events import NOTIFY_CHANNEL
from nex.collector.server.supervisor import supervise

log = logging.getLogger(__name__)


class EventHub:
    """One LISTEN connection per process, fanning wake-ups out to watchers."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        self._task = supervise("event-listener", self._listen, stop=self._stop)

    async def aclose(self) -> None:
        self._stop.set()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _listen(self) -> None:
        while True:
            if self._conn is not None:  # left open by a crash: the supervisor restarted us
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None
            try:
                lost = asyncio.Event()
                self._conn = await asyncpg.connect(self._dsn)
                self._conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await self._conn.add_listener(NOTIFY_CHANNEL, self._notified)
                self._wake_all()  # anything missed while disconnected
                await lost.wait()
                raise ConnectionError("LISTEN connection closed")
            except asyncio.CancelledError:
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Expected when PostgreSQL restarts; anything else crashes the
                # task, and its supervisor logs the traceback and restarts it.
                log.warning("event listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(1)

    def _notified(self, _conn: Any, _pid: int, _channel: str, batch_id: str) -> None:
        for event in self._waiters.get(batch_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def subscribe(self, batch_id: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._waiters[batch_id].add(event)
        try:
            yield event
        finally:
            self._waiters[batch_id].discard(event)
            if not self._waiters[batch_id]:
                del self._waiters[batch_id]
