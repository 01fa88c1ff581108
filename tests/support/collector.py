"""A real collector (gRPC server + arq worker) for tests, in a background thread
with its own event loop, so both sync and async clients can call it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nex.collector.server.config import Settings, load_settings
from tests.support.backing import Backing

TOKEN = "test-token"


@dataclass
class RunningCollector:
    address: str
    token: str
    settings: Settings
    loop: asyncio.AbstractEventLoop
    container: Any

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Runs a coroutine on the collector's loop (for reaching into its container)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def collector_settings(backing: Backing, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "DATABASE_URL": backing.database_url,
        "REDIS_URL": backing.redis_url,
        "DATA_DIR": data_dir,
        "NEX_COLLECTOR_ADDR": "127.0.0.1:0",
        "NEX_COLLECTOR_TOKENS": TOKEN,
        "RECONCILE_INTERVAL_S": 1.0,
        "WATCH_HEARTBEAT_S": 1.0,
    }
    values.update(overrides)
    return load_settings(**values)


@contextmanager
def running_collector(
    settings: Settings, *, work: bool = True, migrate: bool = True
) -> Iterator[RunningCollector]:
    from nex.collector.server.runtime import run

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def ready(container: Any, server: Any) -> None:
        holder["container"] = container
        holder["address"] = server.address
        started.set()

    async def main() -> None:
        try:
            await run(settings, serve=True, work=work, migrate=migrate, stop=stop, ready=ready)
        except BaseException as exc:
            if started.is_set():
                raise  # failed while serving: pytest reports the thread's exception
            holder["error"] = exc  # failed to start: surfaced to the caller below
            started.set()

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    if not started.wait(120) or "error" in holder:
        raise RuntimeError(f"collector did not start: {holder.get('error')!r}")
    try:
        yield RunningCollector(holder["address"], TOKEN, settings, loop, holder["container"])
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)


@contextmanager
def integrated_collector(
    backing: Backing, nex: Any, data_dir: Path, **overrides: Any
) -> Iterator[RunningCollector]:
    """A collector in integrated mode talking to a fake NEX (`nex`: a FakeNex),
    on a database and Redis database of its own."""
    with backing.isolated() as own:
        settings = collector_settings(
            own,
            data_dir,
            MODE_INTEGRATION="integrated",
            NEX_BASE_URL=nex.base_url,
            NEX_API_TOKEN=nex.token,
            **{"NEX_TIMEOUT_S": 1.0, **overrides},
        )
        with running_collector(settings) as running:
            yield running


@contextmanager
def serving_for_worker_processes(
    env: dict[str, str], backing: Backing, data_dir: Path
) -> Iterator[RunningCollector]:
    """A collector serving gRPC with no worker of its own, configured like the
    worker processes started with `env` (their DATABASE_URL and DATA_DIR aside)."""
    overrides = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    settings = collector_settings(backing, data_dir, **overrides)
    with running_collector(settings, work=False) as running:
        yield running
