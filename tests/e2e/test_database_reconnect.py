"""Connections PostgreSQL dropped (a restart, a failover, an operator's
pg_terminate_backend) are replaced: a pooled connection idle for a while is
checked at checkout (db/engine.py), and one that fails in use renews the whole
pool, so the next call after the drop is served and the worker goes on taking
runs."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from nex.collector.client import connect
from nex.collector.server.db.engine import IDLE_PING_S
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import template_service_pb2, template_service_pb2_grpc
from tests.conftest import unique
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.db import fetch_from
from tests.support.waiting import until

_DROP_ALL_BUT_US = (
    "SELECT count(pg_terminate_backend(pid)) AS dropped FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def test_calls_after_postgresql_dropped_every_connection_are_served(
    own_backing: Backing, tmp_path: Path
) -> None:
    settings = collector_settings(own_backing, tmp_path / "data")
    with (
        CollectorEnvironment(settings) as collector,
        connect(collector.address, token=collector.token) as client,
    ):
        template = client.create_template(unique("drop"), user_template="{{ x }}", variables=["x"])
        batch = client.create_batch(unique("drop"), template.id, "mock", "mock-1")
        client.create_runs(batch.id, [{"x": str(i)} for i in range(5)])
        until("the first runs", lambda: client.get_batch(batch.id).counts.completed == 5)

        (row,) = fetch_from(collector.container.database_url, _DROP_ALL_BUT_US)
        assert row["dropped"] >= 1  # the pools held connections, now dead
        time.sleep(IDLE_PING_S + 0.5)  # idle long enough to be checked at checkout

        # Straight through gRPC, not through the shipped client (which would
        # quietly retry an UNAVAILABLE): the first call after the drop is served.
        with grpc.insecure_channel(collector.address) as channel:
            reply = template_service_pb2_grpc.TemplateServiceStub(channel).GetTemplate(
                template_service_pb2.GetTemplateRequest(id=template.id),
                metadata=(("authorization", f"Bearer {collector.token}"),),
            )
        assert reply.template.id == template.id
        client.create_runs(batch.id, [{"x": str(i)} for i in range(5, 10)])
        until("the runs after the drop", lambda: client.get_batch(batch.id).counts.completed == 10)
