"""Side effects that cannot be lost: an automatic evidence link commits with the
status that calls for it (batch finished, dataset READY), delivering a link holds
no row lock while NEX is slow, retryable errors say when to retry, background
tasks that crash are logged and restarted, and the teacher SDKs log no line per
request."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import asyncpg
import pytest
from sqlalchemy.pool import QueuePool

from nex.collector.client import (
    Client,
    DatasetStatus,
    EvidenceStatus,
    GenerationParams,
    RunStatus,
    UnavailableError,
    connect,
)
from nex.collector.server.bootstrap import plain_dsn
from nex.collector.server.domain.datasets import Dataset, DatasetCounts, DatasetFile
from nex.collector.server.parquet.storage import Location
from nex.collector.server.services.datasets import Datasets
from nex.collector.server.services.reconcile import Reconciler
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.nex_api import FakeNex
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import integrated_collector
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
) -> Iterator[CollectorEnvironment]:
    with integrated_collector(
        backing,
        nex,
        tmp_path_factory.mktemp("side-effects"),
        NEX_TIMEOUT_S=10.0,
        DATABASE_POOL_SIZE=6,
        DATABASE_MAX_OVERFLOW=3,
        **teacher_settings(teacher_api),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(collector_: CollectorEnvironment) -> Iterator[Client]:
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
def failing_inserts(collector: CollectorEnvironment, request_id_like: str) -> Iterator[str]:
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


def _wait_for_fault(collector: CollectorEnvironment, sequence: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not fetch_all(collector, f"SELECT is_called FROM {sequence}")[0]["is_called"]:
        assert time.monotonic() < deadline, "the automatic link was never attempted"
        time.sleep(0.05)


def test_a_finished_batch_always_has_its_link(
    collector_: CollectorEnvironment, client: Client, nex: FakeNex
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
    collector_: CollectorEnvironment, client: Client, nex: FakeNex
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
    collector_: CollectorEnvironment, client: Client, nex: FakeNex
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


def test_the_pool_size_comes_from_the_settings(collector_: CollectorEnvironment) -> None:
    pool = collector_.container.engine.pool
    assert isinstance(pool, QueuePool)
    assert (pool.size(), pool._max_overflow) == (6, 3)


def test_unavailable_says_when_to_retry(client: Client, nex: FakeNex) -> None:
    nex.down = True
    try:
        with pytest.raises(UnavailableError) as caught:
            client.create_context_ref(unique("ctx"), "1")
    finally:
        nex.down = False
    assert caught.value.reason == "NEX_UNAVAILABLE"
    assert caught.value.retry_delay == 1.0


def test_a_request_id_that_keeps_conflicting_gives_up(
    collector_: CollectorEnvironment, client: Client, nex: FakeNex
) -> None:
    """A run insert that never lands (a trigger drops it) looks like a concurrent
    call taking its request id, every time: the retry is bounded (before, it
    recursed until the connection pool ran dry)."""
    batch_id = _batch(client, _context_ref(client, nex), link=False)
    request_id = unique("req")
    name = f"drop_{uuid.uuid4().hex[:8]}"
    execute(
        collector_,
        f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.request_id = '{request_id}' THEN RETURN NULL; END IF;
          RETURN NEW;
        END $$""",
    )
    execute(
        collector_,
        f"CREATE TRIGGER {name} BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION {name}()",
    )
    try:
        with pytest.raises(UnavailableError) as caught:
            client.create_run(batch_id, {"x": "1"}, request_id=request_id)
    finally:
        execute(collector_, f"DROP TRIGGER {name} ON runs")
        execute(collector_, f"DROP FUNCTION {name}()")
    assert caught.value.reason == "REQUEST_ID_CONFLICT"
    assert caught.value.retry_delay is not None
    assert client.create_run(batch_id, {"x": "1"}, request_id=request_id).batch_id == batch_id


def test_a_crashed_reconciler_is_logged_and_restarted(
    collector_: CollectorEnvironment,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    reconciler: Reconciler = collector_.container.reconciler
    real_tick = reconciler.tick
    calls = 0

    async def crash_once() -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected reconciler crash")
        return await real_tick()

    with caplog.at_level(logging.ERROR, logger="nex.collector.server.supervisor"):
        monkeypatch.setattr(reconciler, "tick", crash_once)
        deadline = time.monotonic() + 30
        while calls < 3:
            assert time.monotonic() < deadline, "the reconciler did not run again"
            time.sleep(0.05)
    crashes = [r for r in caplog.records if "reconciler" in r.getMessage()]
    assert len(crashes) == 1 and crashes[0].exc_info is not None
    assert "injected reconciler crash" in caplog.text and "Traceback" in caplog.text


def test_teacher_calls_log_no_line_per_request(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    template = client.create_template(unique("t"), user_template="About {{ x }}", variables=["x"])
    batch = client.create_batch(unique("b"), template.id, "openai", "gpt-4o-mini")
    with caplog.at_level(logging.INFO):
        client.create_runs(batch.id, [{"x": str(i)} for i in range(3)])
        for _ in client.watch_batch(batch.id):
            pass
    assert [r.status for r in client.list_runs(batch.id)] == [RunStatus.COMPLETED] * 3
    assert "HTTP Request" not in caplog.text


def test_adopting_a_built_folder_reads_its_manifest_off_the_event_loop(
    collector_: CollectorEnvironment,
    client: Client,
    nex: FakeNex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build that renamed its folder into place and died before recording it:
    the next build adopts the folder by reading its manifest, in a thread."""
    batch_id = _batch(client, _context_ref(client, nex), link=False)
    client.create_runs(batch_id, [{"x": "1"}])
    for _ in client.watch_batch(batch_id):
        pass
    ds = client.build_dataset(unique("ds"), "v1", [batch_id])
    assert client.wait_dataset(ds.id).status == DatasetStatus.READY

    async def current() -> threading.Thread:
        return threading.current_thread()

    loop_thread = collector_.call(current())
    datasets: Datasets = collector_.container.datasets
    real_adopt = datasets._adopt
    read_in: list[threading.Thread] = []

    def adopt(
        dataset: Dataset, final_dir: Location
    ) -> tuple[Sequence[DatasetFile], DatasetCounts] | None:
        read_in.append(threading.current_thread())
        return real_adopt(dataset, final_dir)

    monkeypatch.setattr(datasets, "_adopt", adopt)
    execute(
        collector_,
        "UPDATE datasets SET status = 'building', lease_expires = NULL, ready_time = NULL "
        "WHERE id = $1",
        ds.id,
    )
    assert client.wait_dataset(ds.id, timeout=60).status == DatasetStatus.READY
    assert read_in and all(t is not loop_thread for t in read_in)
