"""A server asked to stop (SIGTERM) says NOT_SERVING on the gRPC health
service first, and lets the calls in flight finish within its grace period:
a load balancer watching health stops sending calls while those drain."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nex.collector.client import Client, PromptTemplate
from tests.support.backing import Backing
from tests.support.db import fetch_from
from tests.support.health import check_health
from tests.support.locks import holding_table
from tests.support.processes import free_port, process_env
from tests.support.waiting import until

TOKEN = "drain-token"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def server(own_backing: Backing, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`nex-collector serve --migrate` in a process of its own, to send SIGTERM to."""
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "serve.log"
    env = process_env(
        own_backing, tmp_path / "data", NEX_COLLECTOR_TOKENS=TOKEN, NEX_COLLECTOR_ADDR=address
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nex.collector.server.cli", "serve", "--migrate"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        until("the server to serve", lambda: proc.poll() is None and check_health(address, 1.0))
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        print(log.read_text(errors="replace")[-4000:])


def test_health_is_not_serving_while_calls_in_flight_drain(
    server: tuple[subprocess.Popen[bytes], str], own_backing: Backing
) -> None:
    proc, address = server
    with (
        Client.connect(address, token=TOKEN) as client,
        grpc.insecure_channel(address) as channel,
        ThreadPoolExecutor(1) as pool,
    ):
        template = client.create_template("drain", user_template="Hi {{ x }}.", variables=["x"])
        statuses = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )
        assert next(statuses).status == SERVING

        with holding_table(own_backing.database_url, "templates") as lock:
            # A call in flight: it waits at the database until the lock goes.
            in_flight: Future[PromptTemplate] = pool.submit(client.get_template, template.id)
            until("the call to wait at the database", lambda: _waits_on_lock(own_backing))
            proc.send_signal(signal.SIGTERM)
            assert next(statuses).status == NOT_SERVING
            assert not in_flight.done(), "the call ended before the drain let it"
            assert proc.poll() is None, "the server stopped with a call in flight"
            lock.release_now()
            assert in_flight.result(30).id == template.id  # drained, not cut
        assert proc.wait(30) == 0


def _waits_on_lock(backing: Backing) -> bool:
    """Whether a session of the collector waits for a lock now."""
    rows = fetch_from(
        backing.database_url,
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return bool(rows[0]["n"])
