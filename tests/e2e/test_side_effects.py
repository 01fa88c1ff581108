"""Side effects that cannot be lost: an automatic evidence link commits with the
status that calls for it (batch finished, dataset READY), and delivering a link
holds no row lock while NEX is slow."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest

from nex.collector.client import Client, DatasetStatus, EvidenceStatus, GenerationParams, connect
from nex.collector.server.bootstrap import plain_dsn
from tests.conftest import teacher_settings, unique
from tests.fakes.nex_api import FakeNex
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import RunningCollector, collector_settings, running_collector
from tests.support.db import execute, fetch_all


@pytest.fixture(scope="module")
def nex() -> Iterator[FakeNex]:
    fake = FakeNex().start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(scope="module")
def collector_(
    backing: Backing,
    nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningCollector]:
    with backing.isolated() as own:
        settings = collector_settings(
            own,
            Path(tmp_path_factory.mktemp("side-effects")),
            MODE_INTEGRATION="integrated",
            NEX_BASE_URL=nex.base_url,
            NEX_API_TOKEN=nex.token,
            NEX_TIMEOUT_S=10.0,
            **teacher_settings(teacher_api),
        )
        with running_collector(settings) as running:
            yield running


@pytest.fixture(scope="module")
def client(collector_: RunningCollector) -> Iterator[Client]:
    with connect(collector_.address, token=collector_.token) as c:
        yield c


def _context_ref(client: Client, nex: FakeNex) -> str:
    cid = unique("ctx")
    nex.contexts.add((cid, "1"))
    return client.create_context_ref(cid, "1").id


def _batch(client: Client, ref_id: str, *, link: bool) -> str:
    template = client.create_template(unique("t"), user_template="About {{ x }}", variables=["x"])
    return client.create_batch(
        unique("b"),
        template.id,
        "mock",
        "mock-1",
        params=GenerationParams(top_logprobs=2),
        context_ref_id=ref_id,
        link_evidence=link,
    ).id


@contextmanager
def failing_inserts(collector: RunningCollector, request_id_like: str) -> Iterator[str]:
    """A fault in the database: inserting an evidence link whose request_id is
    LIKE `request_id_like` fails. Yields a sequence counting the failures (a
    sequence, because it keeps counting whatever the transaction's fate)."""
    name = f"fault_{uuid.uuid4().hex[:8]}"
    execute(collector, f"CREATE SEQUENCE {name}")
    execute(
        collector,
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.request_id LIKE '{request_id_like}' THEN
            PERFORM nextval('{name}');
            RAISE EXCEPTION 'injected fault: evidence link %', NEW.request_id;
          END IF;
          RETURN NEW;
        END $$""",
    )
    execute(
        collector,
        f"CREATE TRIGGER {name} BEFORE INSERT ON evidence_links "
        f"FOR EACH ROW EXECUTE FUNCTION {name}()",
    )
    try:
        yield name
    finally:
        execute(collector, f"DROP TRIGGER {name} ON evidence_links")
        execute(collector, f"DROP FUNCTION {name}()")
        execute(collector, f"DROP SEQUENCE {name}")


def _wait_for_fault(collector: RunningCollector, sequence: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not fetch_all(collector, f"SELECT is_called FROM {sequence}")[0]["is_called"]:
        assert time.monotonic() < deadline, "the automatic link was never attempted"
        time.sleep(0.05)


def test_a_finished_batch_always_has_its_link(
    collector_: RunningCollector, client: Client, nex: FakeNex
) -> None:
    """The link commits with the last run's end: when inserting it fails, the run
    does not end either (before, the batch finished and the link was lost)."""
    batch_id = _batch(client, _context_ref(client, nex), link=True)
    with failing_inserts(collector_, f"auto:{batch_id}") as faults:
        client.create_runs(batch_id, [{"x": "1"}])
        _wait_for_fault(collector_, faults)
        (row,) = fetch_all(
            collector_,
            "SELECT (SELECT count(*) FROM runs WHERE batch_id = $1"
            "        AND status IN ('queued', 'running')) AS active,"
            "       (SELECT count(*) FROM evidence_links WHERE request_id = $2) AS links",
            batch_id,
            f"auto:{batch_id}",
        )
        assert row["active"] > 0 or row["links"] == 1, "batch finished, its link lost"


def test_a_ready_dataset_always_has_its_link(
    collector_: RunningCollector, client: Client, nex: FakeNex
) -> None:
    ref_id = _context_ref(client, nex)
    batch_id = _batch(client, ref_id, link=False)
    client.create_runs(batch_id, [{"x": str(i)} for i in range(3)])
    for _ in client.watch_batch(batch_id):
        pass
    with failing_inserts(collector_, "auto:ds_%") as faults:
        ds = client.build_dataset(
            unique("ds"), "v1", [batch_id], context_ref_id=ref_id, link_evidence=True
        )
        _wait_for_fault(collector_, faults)
        assert client.get_dataset(ds.id).status != DatasetStatus.READY, "READY, its link lost"
    # Without the fault: READY and the link are one commit, so the link is there
    # the moment the dataset is READY.
    ds = client.build_dataset(
        unique("ds"), "v1", [batch_id], context_ref_id=ref_id, link_evidence=True
    )
    assert client.wait_dataset(ds.id).status == DatasetStatus.READY
    (link,) = list(client.list_evidence_links(ref_id))
    assert link.dataset_id == ds.id


def test_a_batch_is_linked_in_the_commit_that_finishes_it(client: Client, nex: FakeNex) -> None:
    ref_id = _context_ref(client, nex)
    batch_id = _batch(client, ref_id, link=True)
    client.create_runs(batch_id, [{"x": str(i)} for i in range(5)])
    for _ in client.watch_batch(batch_id):
        pass
    (link,) = list(client.list_evidence_links(ref_id))
    assert link.kind == "teacher_batch" and link.run_id


def test_delivery_holds_no_row_lock_while_nex_is_slow(
    collector_: RunningCollector, client: Client, nex: FakeNex
) -> None:
    ref_id = _context_ref(client, nex)
    batch_id = _batch(client, ref_id, link=False)
    (run,) = client.create_runs(batch_id, [{"x": "1"}])
    nex.post_held.clear()
    nex.posts_released.clear()
    try:
        link = client.create_evidence_link(ref_id, run_id=run.id, note="slow NEX")
        assert nex.post_held.wait(30), "the link was never posted"

        async def lock_the_row() -> None:
            conn = await asyncpg.connect(plain_dsn(collector_.container.database_url))
            try:
                async with conn.transaction():
                    await conn.execute(
                        "SELECT id FROM evidence_links WHERE id = $1 FOR UPDATE NOWAIT", link.id
                    )
            finally:
                await conn.close()

        collector_.call(lock_the_row())  # before: LockNotAvailableError
    finally:
        nex.posts_released.set()
    deadline = time.monotonic() + 30
    while client.get_evidence_link(link.id).status != EvidenceStatus.POSTED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert nex.posts[link.id] == 1
