"""A micro-batcher: callers submit one item each and await their own result, while
items that arrive within a few milliseconds share one database transaction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        handler: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 256,
        linger_s: float = 0.003,
        concurrency: int = 2,
        name: str = "batch",
    ) -> None:
        self._handler = handler
        self._name = name
        self._max_size = max_size
        self._linger = linger_s
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop())
        if len(self._pending) >= self._max_size:
            self._wakeup.set()
        return await future

    async def _loop(self) -> None:
        while self._pending:
            # A free slot first, then the chunk: what arrived while every slot was
            # busy goes in the next transaction instead of waiting behind it.
            await self._slots.acquire()
            if len(self._pending) < self._max_size:
                if self._linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self._linger)
                else:
                    await asyncio.sleep(0)  # submits of this loop iteration join
            self._wakeup.clear()
            chunk, self._pending = self._pending[: self._max_size], self._pending[self._max_size :]
            task = asyncio.create_task(self._flush(chunk))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _flush(self, chunk: list[tuple[T, asyncio.Future[R]]]) -> None:
        started = time.perf_counter()
        try:
            results = await self._handler([item for item, _ in chunk])
            log.debug(
                "%s: %d items in %.1f ms",
                self._name,
                len(chunk),
                (time.perf_counter() - started) * 1000,
            )
        except BaseException as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(chunk, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
