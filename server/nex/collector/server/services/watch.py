"""WatchRuns: replay the stored event log after a revision, then follow live events.
PostgreSQL NOTIFY (sent in the transaction that appends events) wakes watchers
in every server process; the log itself is always read from the table, so a
missed notification costs at most one heartbeat interval, never an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from nex.collector.server.db.repositories.events import NOTIFY_CHANNEL
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.batches import RunEvent
from nex.collector.server.domain.errors import Unavailable, Violations
from nex.collector.server.services.common import check_id, require
from nex.collector.server.supervisor import supervise

log = logging.getLogger(__name__)

_PAGE = 1000
_COALESCE_S = 0.05


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


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


class RunWatcher:
    def __init__(self, uow: UnitOfWorkFactory, hub: EventHub, *, heartbeat_s: float) -> None:
        self._uow = uow
        self._hub = hub
        self._heartbeat = heartbeat_s
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Ends every open watch with UNAVAILABLE, so clients resume elsewhere now
        rather than when the server's grace period runs out."""
        self._closing.set()

    async def watch(
        self, *, batch_id: str, run_id: str, after_revision: int, follow: bool
    ) -> AsyncIterator[RunEvent | Heartbeat]:
        v = Violations()
        if bool(batch_id) == bool(run_id):
            v.add("target", "set exactly one of batch_id and run_id")
        if after_revision < 0:
            v.add("after_revision", "must not be negative")
        check_id(v, "batch_id", batch_id, required=False)
        check_id(v, "run_id", run_id, required=False)
        v.raise_if_any()
        async with self._uow() as tx:
            if run_id:
                run = require(await tx.runs.get(run_id, full=False), "run", run_id)
                batch_id = run.batch_id
            else:
                require(await tx.batches.get(batch_id), "batch", batch_id)
        last = after_revision
        with self._hub.subscribe(batch_id) as wakeup:
            while True:
                if self._closing.is_set():
                    raise Unavailable(
                        "the server is shutting down; resume the watch", reason="SHUTTING_DOWN"
                    )
                wakeup.clear()
                async with self._uow() as tx:
                    # Check for unfinished work *before* reading events, so that an
                    # event committed after the check is still read below.
                    if run_id:
                        status = await tx.runs.status_of(run_id)
                        done = status is not None and status.terminal
                    else:
                        done = not follow and await tx.runs.active_count(batch_id) == 0
                    events = await tx.events.after(
                        revision=last, batch_id=batch_id, run_id=run_id, limit=_PAGE
                    )
                for event in events:
                    last = event.revision
                    yield event
                    if run_id and event.status.terminal:
                        return  # nothing follows a run's terminal event
                if len(events) == _PAGE:
                    continue  # more to replay before waiting
                if done:
                    return
                woken = asyncio.ensure_future(wakeup.wait())
                closing = asyncio.ensure_future(self._closing.wait())
                try:
                    fired, _ = await asyncio.wait(
                        {woken, closing},
                        timeout=self._heartbeat,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:  # also when the stream closes mid-wait
                    woken.cancel()
                    closing.cancel()
                if not fired:
                    yield Heartbeat()
                elif not self._closing.is_set():
                    # Let a burst of commits land, so a busy batch costs one read
                    # per interval rather than one per transaction.
                    await asyncio.sleep(_COALESCE_S)
