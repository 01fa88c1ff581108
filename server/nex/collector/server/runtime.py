"""Long-running processes: dev (everything in one), serve, worker. Each runs in the
foreground until SIGINT/SIGTERM, then drains and closes what it opened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from nex.collector.server import logs, metrics
from nex.collector.server.api.server import GrpcServer
from nex.collector.server.bootstrap import Container, StartupError, open_container
from nex.collector.server.config import Settings
from nex.collector.server.services.backlog import export_backlog_forever
from nex.collector.server.supervisor import supervise
from nex.collector.server.worker.processes import WorkerProcesses

log = logging.getLogger(__name__)

# The umask of a collector process: files it creates are never world-readable.
PRIVATE_UMASK = 0o027


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
    worker_processes: int = 0,
    stop: asyncio.Event | None = None,
    ready: Callable[[Container, GrpcServer | None], None] | None = None,
) -> None:
    """Serves gRPC and/or runs a worker until `stop` is set (or a signal arrives);
    with `worker_processes`, also that many `nex-collector worker` processes on
    the same database and Redis (the embedded ones included)."""
    if serve and (problem := settings.anonymous_exposure):
        raise StartupError(problem)
    stop = stop or asyncio.Event()
    _stop_on_signals(stop)
    logs.quiet_sdk_transport(settings.log_level)
    async with open_container(settings, migrate=migrate, serve=serve) as container:
        server = GrpcServer(container, settings.addr) if serve else None
        tasks: list[asyncio.Task[None]] = []
        children = WorkerProcesses(
            worker_processes,
            {
                "DATABASE_URL": container.database_url,
                "REDIS_URL": container.redis_url,
                "DATA_DIR": str(settings.data_dir),
            },
        )
        try:
            stop_metrics = metrics.serve(settings.metrics_addr)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {settings.metrics_addr}: {exc}") from exc
        try:
            if server is not None:
                await server.start()
            if server is not None and settings.metrics_addr:
                tasks.append(
                    supervise(
                        "backlog",
                        lambda: export_backlog_forever(
                            container.uow, settings.reconcile_interval_s, stop
                        ),
                        stop=stop,
                    )
                )
            if work:
                from nex.collector.server.worker.runner import run_worker

                # run_worker restarts its own arq loop; a crash of the whole worker
                # stops the process rather than leaving it serving without one.
                tasks.append(
                    supervise(
                        "worker", lambda: run_worker(container, stop), stop=stop, restart=False
                    )
                )
            await children.start()
            if ready is not None:
                ready(container, server)
            await stop.wait()
            log.info("shutting down")
        finally:
            stop_metrics()
            await children.stop()  # before their database and Redis close
            if server is not None:
                await server.stop(grace=5.0)
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=15)
