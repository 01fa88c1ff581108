"""One collector for the fuzz suite: integrated mode (so EvidenceService does
real work) on its own database, a fake NEX and the fake teacher at the wire, and
a few real rows whose ids the strategies mix into requests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from nex.collector.client import Client, connect
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.nex_api import FakeNex
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.fuzz.strategies import Pools
from tests.support.backing import Backing
from tests.support.collector import integrated_collector


@dataclass
class Fuzzed:
    collector: CollectorEnvironment
    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    pools: Pools
    batch_id: str  # a batch no fuzzed request names


@pytest.fixture(scope="session")
def fuzz_nex() -> Iterator[FakeNex]:
    fake = FakeNex().start_in_thread()
    fake.contexts.update({("fuzz", "1"), ("n1", "v1"), ("fuzz", "fuzz")})
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(scope="session")
def fuzz_collector(
    backing: Backing,
    fuzz_nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CollectorEnvironment]:
    with integrated_collector(
        backing, fuzz_nex, tmp_path_factory.mktemp("fuzz"), **teacher_settings(teacher_api)
    ) as running:
        yield running


def _seed(client: Client) -> tuple[Pools, str]:
    ref = client.create_context_ref("fuzz", "1")
    template = client.create_template(unique("fuzz"), user_template="{{ x }}", variables=["x"])
    batch = client.create_batch(unique("fuzz"), template.id, "mock", "mock-1")
    run = client.create_run(batch.id, {"x": "hello"})
    deadline = time.monotonic() + 30
    while client.get_run(run.id).status.name != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(0.1)
    dataset = client.build_dataset(unique("fuzz"), "v1", [batch.id])
    link = client.create_evidence_link(ref.id, run_id=run.id)
    ids = (ref.id, template.id, batch.id, run.id, dataset.id, link.id)
    # A batch of its own for tests that need one nobody cancels: not in the pools.
    private = client.create_batch(unique("fuzz-private"), template.id, "mock", "mock-1")
    return Pools(ids=ids, extra={"name": ("fuzz", unique("fuzz"), "a\n", "..")}), private.id


@pytest.fixture(scope="session")
def fuzzed(fuzz_collector: CollectorEnvironment) -> Iterator[Fuzzed]:
    with connect(fuzz_collector.address, token=fuzz_collector.token) as client:
        pools, batch_id = _seed(client)
    options = [("grpc.max_send_message_length", 64 << 20)]
    with grpc.insecure_channel(fuzz_collector.address, options=options) as channel:
        yield Fuzzed(
            fuzz_collector,
            channel,
            (("authorization", f"Bearer {fuzz_collector.token}"),),
            pools,
            batch_id,
        )
