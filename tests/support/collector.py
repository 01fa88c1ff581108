"""The test suite's collectors: nex.collector.server.testing's CollectorEnvironment
on the suite's backing servers (a database and Redis database of their own),
with short reconcile and heartbeat intervals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nex.collector.server.config import Settings
from nex.collector.server.testing import DEFAULT_TOKEN as TOKEN
from nex.collector.server.testing import CollectorEnvironment, make_settings
from tests.support.backing import Backing

__all__ = ["TOKEN", "collector_settings", "integrated_collector", "serving_for_worker_processes"]


def collector_settings(backing: Backing, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "RECONCILE_INTERVAL_S": 1.0,
        "WATCH_HEARTBEAT_S": 1.0,
        **overrides,
    }
    return make_settings(
        data_dir,
        database_url=backing.database_url,
        redis_url=backing.redis_url,
        token=TOKEN,
        **values,
    )


@contextmanager
def integrated_collector(
    backing: Backing, nex: Any, data_dir: Path, **overrides: Any
) -> Iterator[CollectorEnvironment]:
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
        with CollectorEnvironment(settings) as running:
            yield running


@contextmanager
def serving_for_worker_processes(
    env: dict[str, str], backing: Backing, data_dir: Path
) -> Iterator[CollectorEnvironment]:
    """A collector serving gRPC with no worker of its own, configured like the
    worker processes started with `env` (their DATABASE_URL and DATA_DIR aside)."""
    overrides = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    settings = collector_settings(backing, data_dir, **overrides)
    with CollectorEnvironment(settings, work=False) as running:
        yield running
