"""Worker liveness: each worker process renews a row in PostgreSQL (a heartbeat)
on a connection and a loop of its own, so that a worker whose claims or commits
are slow (a busy database, a long-held lock, a main loop busy with hundreds of
jobs) still reads as alive. The reconciler takes
back runs and jobs only from workers whose heartbeat expired."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.services.clock import now
from nex.collector.server.services.side_loop import SideLoop

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """Unique per process start: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Heartbeat:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        worker_id: str,
        *,
        lease: timedelta,
        interval_s: float,
        loop: SideLoop | None = None,
    ) -> None:
        """With `loop`, everything runs there (and `uow` must be used there only)."""
        self._uow = uow
        self._side = loop
        self.worker_id = worker_id
        self._lease = lease
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None

    async def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._side is None:
            await coro
        else:
            await self._side.run(coro)

    async def start(self) -> None:
        """Registers the worker (before it takes any job), then keeps it alive."""
        await self._on_loop(self._start())

    async def _start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._beat_forever(), name="heartbeat")

    async def beat(self) -> None:
        async with self._uow() as tx:
            await tx.workers.beat(self.worker_id, now() + self._lease)
            await tx.commit()

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await asyncio.wait_for(self.beat(), self._interval * 2)
            except Exception as exc:  # the next beat tries again; the lease spans several
                log.warning("worker heartbeat failed: %s", exc)

    async def aclose(self) -> None:
        """Stops beating and says goodbye: what this worker still holds is taken
        back at the reconciler's next pass, not when the lease runs out."""
        await self._on_loop(self._stop())

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            try:
                async with self._uow() as tx:
                    await tx.workers.remove(self.worker_id)
                    await tx.commit()
            except Exception as exc:
                log.warning("could not unregister worker %s: %s", self.worker_id, exc)
