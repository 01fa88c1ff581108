"""Long-running processes: dev (everything in one), serve, worker. Each runs in the
foreground until SIGINT/SIGTERM, then drains and closes what it opened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from nex.collector.server import metrics
from nex.collector.server.api.server import GrpcServer
from nex.collector.server.bootstrap import Container, StartupError, open_container
from nex.collector.server.config import Settings
from nex.collector.server.services.backlog import export_backlog_forever

log = logging.getLogger(__name__)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def run(
    settings: Settings,
    *,
    serve: bool,
    work: bool,
    migrate: bool,
    stop: asyncio.Event | None = None,
    ready: Callable[[Container, GrpcServer | None], None] | None = None,
) -> None:
    """Serves gRPC and/or runs a worker until `stop` is set (or a signal arrives)."""
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    async with open_container(settings, migrate=migrate, serve=serve) as container:
        server = GrpcServer(container, settings.addr) if serve else None
        tasks: list[asyncio.Task[None]] = []
        try:
            stop_metrics = metrics.serve(settings.metrics_addr)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {settings.metrics_addr}: {exc}") from exc
        try:
            if server is not None:
                await server.start()
            if server is not None and settings.metrics_addr:
                tasks.append(
                    asyncio.create_task(
                        export_backlog_forever(container.uow, settings.reconcile_interval_s, stop),
                        name="backlog",
                    )
                )
            if work:
                from nex.collector.server.worker.runner import run_worker

                tasks.append(asyncio.create_task(run_worker(container, stop), name="worker"))
            if ready is not None:
                ready(container, server)
            await stop.wait()
            log.info("shutting down")
        finally:
            stop_metrics()
            if server is not None:
                await server.stop(grace=5.0)
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=15)
