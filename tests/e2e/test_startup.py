"""What an operator sees when a process cannot start: one line saying why and
what to do, exit status 1, no traceback, and no password in the message."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nex.collector.server.testing import CollectorEnvironment
from tests.support.backing import Backing
from tests.support.processes import free_port


def nex_collector(
    *args: str, env: dict[str, str], data_dir: Path
) -> subprocess.CompletedProcess[str]:
    """`nex-collector ARGS` as an operator runs it (a real process)."""
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    full |= {
        "DATA_DIR": str(data_dir),
        "NEX_COLLECTOR_ADDR": f"127.0.0.1:{free_port()}",
        "COLUMNS": "500",  # one message, one line
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "nex.collector.server.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
    )


def refused(message: str, result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    said = " ".join(output.split())
    assert message in said.partition("cannot start: ")[2], output
    assert "Traceback" not in output


@pytest.fixture
def empty(backing: Backing) -> Iterator[Backing]:
    with backing.isolated() as own:
        yield own


def test_serve_refuses_an_unmigrated_database_until_migrate(empty: Backing, tmp_path: Path) -> None:
    env = {"DATABASE_URL": empty.database_url, "REDIS_URL": empty.redis_url}
    result = nex_collector("serve", env=env, data_dir=tmp_path)
    refused("has no schema yet: run `nex-collector migrate`", result)

    # Migrating needs PostgreSQL only (compose runs it before Redis is up).
    no_redis = env | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    migrated = nex_collector("migrate", env=no_redis, data_dir=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is up to date" in migrated.stdout + migrated.stderr


def test_unreachable_postgresql_is_named_without_its_password(
    backing: Backing, tmp_path: Path
) -> None:
    url = f"postgresql+asyncpg://postgres:hunter2-secret@127.0.0.1:{free_port()}/postgres"
    result = nex_collector(
        "worker", env={"DATABASE_URL": url, "REDIS_URL": backing.redis_url}, data_dir=tmp_path
    )
    refused("cannot reach PostgreSQL at postgresql+asyncpg://postgres:***@127.0.0.1", result)
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_unreachable_redis_is_named(backing: Backing, tmp_path: Path) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    result = nex_collector(
        "serve",
        "--migrate",  # a no-op if the session's collector has migrated it already
        env={"DATABASE_URL": backing.database_url, "REDIS_URL": url},
        data_dir=tmp_path,
    )
    refused("cannot reach Redis at redis://:***@127.0.0.1", result)
    assert "hunter2-secret" not in result.stdout + result.stderr


def test_a_taken_address_is_refused_not_shared(
    collector: CollectorEnvironment, backing: Backing, tmp_path: Path
) -> None:
    # gRPC's default SO_REUSEPORT would let a second server share the port.
    result = nex_collector(
        "serve",
        "--addr",
        collector.address,
        env={"DATABASE_URL": backing.database_url, "REDIS_URL": backing.redis_url},
        data_dir=tmp_path,
    )
    refused(f"cannot listen on {collector.address}: the address is in use", result)


def test_a_taken_metrics_address_is_refused(backing: Backing, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        result = nex_collector(
            "serve",
            "--migrate",
            env={
                "DATABASE_URL": backing.database_url,
                "REDIS_URL": backing.redis_url,
                "METRICS_ADDR": addr,
            },
            data_dir=tmp_path,
        )
    refused(f"cannot serve metrics on {addr}", result)


def test_serving_the_network_without_tokens_is_refused_unless_anonymous_is_allowed(
    backing: Backing, tmp_path: Path
) -> None:
    addr = f"0.0.0.0:{free_port()}"  # what the Dockerfile binds
    base = {"NEX_COLLECTOR_TOKENS": "", "NEX_COLLECTOR_ALLOW_ANONYMOUS": ""}
    for command in ("serve", "dev"):
        result = nex_collector(command, "--addr", addr, env=base, data_dir=tmp_path)
        refused(f"{addr} is reachable from the network and NEX_COLLECTOR_TOKENS is empty", result)
        assert "NEX_COLLECTOR_ALLOW_ANONYMOUS=true" in result.stdout + result.stderr

    # Allowed explicitly, the same command gets past the check (and stops at Redis).
    no_redis = f"redis://127.0.0.1:{free_port()}/0"
    allowed = nex_collector(
        "serve",
        "--migrate",
        "--addr",
        addr,
        env=base
        | {
            "NEX_COLLECTOR_ALLOW_ANONYMOUS": "true",
            "DATABASE_URL": backing.database_url,
            "REDIS_URL": no_redis,
        },
        data_dir=tmp_path,
    )
    refused("cannot reach Redis at redis://127.0.0.1", allowed)
