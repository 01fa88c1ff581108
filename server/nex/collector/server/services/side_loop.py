"""An event loop in a thread of its own, for the little I/O that must not wait
behind a busy main loop: a worker running hundreds of jobs takes tens to
hundreds of milliseconds per loop iteration, and every database round trip
costs one. Here a round trip costs a few milliseconds (the GIL is handed over
every switch interval), so a teacher's answer is committed at once."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


# How long a thread may hold the GIL while another waits for it (CPython's
# default is 5 ms). Each step of a transaction on the side loop waits for the
# GIL once; at 1 ms a commit is a few milliseconds even beside a busy main loop.
SWITCH_INTERVAL_S = 0.001


class SideLoop:
    def __init__(self, name: str) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        # uvloop, like the worker's main loop: this loop's work is all socket
        # round trips, and the standard loop spends more on each than asyncpg does.
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Starts `coro` on the side loop now, without waiting for the calling
        loop's next turn; returns a future of the calling loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs `coro` on the side loop; awaits it from the calling loop."""
        return await self.start(coro)

    async def aclose(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join, 10)
        if not self._thread.is_alive():
            self._loop.close()
