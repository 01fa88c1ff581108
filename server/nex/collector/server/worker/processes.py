"""Worker processes started by `nex-collector dev`, so that a development box
uses every core: the server's process serves gRPC and the workers, each an
ordinary `nex-collector worker`, call teachers and build datasets (the metrics
endpoint is the server's alone). A worker that dies is started again; on the
way out each is asked to drain (SIGTERM) before its database and Redis go
away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

# A worker that dies sooner than this after starting is not restarted at once:
# the next try waits RESTART_DELAY_S, so a broken setup does not spin.
QUICK_EXIT_S = 5.0
RESTART_DELAY_S = 2.0
DRAIN_S = 20.0
# `dev` starts one worker process per core it may use, up to this many: at a
# fast teacher one worker's event loop is the limit (about one core), and the
# server, PostgreSQL and Redis share the rest.
MAX_DEFAULT_PROCESSES = 4


def default_count() -> int:
    """Worker processes `dev` starts unless told: one per usable core, 1 to
    MAX_DEFAULT_PROCESSES."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(usable or 1, MAX_DEFAULT_PROCESSES))


class WorkerProcesses:
    def __init__(self, count: int, env: Mapping[str, str]) -> None:
        self._count = count
        # METRICS_ADDR is the server's: a worker binding it too could not start.
        self._env = {**os.environ, **env, "METRICS_ADDR": ""}
        self._children: list[asyncio.subprocess.Process | None] = [None] * count
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep(i), name=f"worker-process-{i}")
            for i in range(self._count)
        ]

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._live()]

    async def _keep(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nex.collector.server.cli", "worker", env=self._env
            )
            self._children[index] = child
            if self._stopping:  # stop() came while this one was starting
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
            code = await child.wait()
            if self._stopping:
                return
            log.warning("worker process %d exited with code %s; starting it again", index, code)
            if loop.time() - started < QUICK_EXIT_S:
                await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        """SIGTERM to every worker; a worker still running after DRAIN_S is killed."""
        self._stopping = True
        for child in self._live():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=DRAIN_S)
        for child in self._live():
            log.warning("worker process %d did not drain in %.0fs; killed", child.pid, DRAIN_S)
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _live(self) -> list[asyncio.subprocess.Process]:
        return [c for c in self._children if c is not None and c.returncode is None]
