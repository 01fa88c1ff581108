"""The private event-loop thread the blocking ``Client`` runs the ``AsyncClient`` on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="nex-collector-client", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed() or not self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Runs ``coro`` on the loop and blocks until it is done."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync Client cannot be called from its own event loop")
        if self.closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt and friends: cancel the work on the loop too.
            future.cancel()
            raise

    def iterate(self, agen: AsyncIterator[_T]) -> Iterator[_T]:
        """Iterates an async iterator from this (another) thread, lazily."""

        async def step() -> _T:
            return await anext(agen)

        try:
            while True:
                try:
                    item = self.run(step())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.closed:
                with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                    self.run(aclose())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join()
