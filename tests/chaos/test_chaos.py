"""Nothing is lost: a worker killed with SIGKILL mid-run, Redis restarted empty, a
teacher failing 20 % of calls. PostgreSQL is the source of truth."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from nex.collector.client import (
    BatchStatus,
    Client,
    DatasetStatus,
    GenerationParams,
    TeacherBatch,
    connect,
)
from nex.collector.server.parquet.verify import verify_dataset
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.db import execute
from tests.support.processes import RedisProcess, WorkerProcess

LEASE_S = 3.0


@pytest.fixture
def chaos_env(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, redis: RedisProcess, tmp_path: Path
) -> dict[str, str]:
    env = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": redis.url,
        "DATA_DIR": str(tmp_path / "data"),
        "RUN_LEASE_S": str(LEASE_S),
        "RECONCILE_INTERVAL_S": "0.5",
        "TEACHER_MAX_ATTEMPTS": "8",
        "WORKER_MAX_JOBS": "16",
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in teacher_settings(fresh_teacher_api).items()})
    return env


@pytest.fixture
def server_only(
    chaos_env: dict[str, str], own_backing: Backing, tmp_path: Path
) -> Iterator[CollectorEnvironment]:
    """A collector that serves gRPC but runs no worker: workers are processes."""
    overrides = {k: v for k, v in chaos_env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    settings = collector_settings(own_backing, tmp_path / "data", **overrides)
    with CollectorEnvironment(settings, work=False) as running:
        yield running


@pytest.fixture
def chaos_client(server_only: CollectorEnvironment) -> Iterator[Client]:
    with connect(server_only.address, token=server_only.token) as c:
        yield c


def _batch(client: Client, n: int) -> tuple[TeacherBatch, list[str]]:
    template = client.create_template(unique("chaos"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("chaos"),
        template.id,
        "openai",
        "gpt-4o-mini",
        params=GenerationParams(top_logprobs=2, max_tokens=8),
    )
    runs = client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(n)])
    return batch, [r.id for r in runs]


def _wait_done(client: Client, batch_id: str, timeout: float = 90) -> TeacherBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get_batch(batch_id)
        if batch.status == BatchStatus.COMPLETED:
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch did not finish: {client.get_batch(batch_id).counts}")


def _assert_nothing_resent(api: FakeTeacherAPI, seconds: float = LEASE_S + 1.5) -> None:
    """After every run completed, the teacher hears nothing more (reconciler
    passes included)."""
    api.reset()
    time.sleep(seconds)
    assert api.total_requests == 0


def test_worker_killed_mid_run_loses_nothing(
    chaos_client: Client,
    chaos_env: dict[str, str],
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    fresh_teacher_api.latency_s = 0.4
    batch, run_ids = _batch(chaos_client, 60)
    first = WorkerProcess(chaos_env, tmp_path / "worker1.log").start()
    try:
        deadline = time.monotonic() + 60
        while True:  # kill it mid-run: some runs done, some in the teacher's hands
            counts = chaos_client.get_batch(batch.id).counts
            if counts.completed >= 5 and counts.running > 0:
                break
            assert time.monotonic() < deadline, (tmp_path / "worker1.log").read_text()[-3000:]
            time.sleep(0.05)
        first.kill9()
    finally:
        first.stop()
    second = WorkerProcess(chaos_env, tmp_path / "worker2.log").start()
    try:
        done = _wait_done(chaos_client, batch.id)
        assert (done.counts.completed, done.counts.total) == (60, 60)
        _assert_nothing_resent(fresh_teacher_api)
    finally:
        second.stop()
    # The runs the killed worker held were taken again (one more attempt each), or
    # completed from the answer it had already stored (no attempt more).
    attempts = Counter(chaos_client.get_run(r).attempt for r in run_ids)
    assert set(attempts) <= {1, 2}


def test_a_stopped_worker_hands_back_every_run_it_held(
    chaos_client: Client,
    chaos_env: dict[str, str],
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    """SIGTERM mid-batch: no run is left running under the stopped worker's lease
    (ten minutes here, so only a hand-back can free them), and the next worker
    finishes the batch at once."""
    env = {**chaos_env, "RUN_LEASE_S": "600"}
    fresh_teacher_api.latency_s = 0.3
    batch, _ = _batch(chaos_client, 60)
    log = tmp_path / "worker1.log"
    first = WorkerProcess(env, log).start()
    try:
        deadline = time.monotonic() + 60
        while True:
            counts = chaos_client.get_batch(batch.id).counts
            if counts.completed >= 5 and counts.running > 0:
                break
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        first.stop()  # SIGTERM, then wait for it to exit
    counts = chaos_client.get_batch(batch.id).counts
    assert counts.running == 0, log.read_text()[-3000:]
    assert counts.completed + counts.queued == 60
    assert "Traceback" not in log.read_text()
    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        done = _wait_done(chaos_client, batch.id, timeout=60)
        assert (done.counts.completed, done.counts.total) == (60, 60)
    finally:
        second.stop()


def test_redis_restarted_empty_loses_nothing(
    chaos_client: Client,
    chaos_env: dict[str, str],
    fresh_teacher_api: FakeTeacherAPI,
    redis: RedisProcess,
    tmp_path: Path,
) -> None:
    fresh_teacher_api.latency_s = 0.2
    worker = WorkerProcess(chaos_env, tmp_path / "worker.log").start()
    try:
        batch, _ = _batch(chaos_client, 80)
        deadline = time.monotonic() + 60
        while chaos_client.get_batch(batch.id).counts.completed < 5:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.1)
        redis.kill()
        time.sleep(1.0)
        redis.start()  # same port, nothing in it: every queued job is gone
        done = _wait_done(chaos_client, batch.id)
        assert (done.counts.completed, done.counts.total) == (80, 80)
        ok_per_prompt = Counter(
            x.request["messages"][0]["content"]
            for x in fresh_teacher_api.exchanges
            if x.status == 200
        )
        assert max(ok_per_prompt.values()) == 1  # no completed run was sent again
        _assert_nothing_resent(fresh_teacher_api)
    finally:
        worker.stop()


def test_teacher_failing_a_fifth_of_calls(
    chaos_client: Client,
    chaos_env: dict[str, str],
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    fresh_teacher_api.failure_rate = 0.2
    worker = WorkerProcess({**chaos_env, "WORKER_MAX_JOBS": "64"}, tmp_path / "worker.log").start()
    try:
        batch, run_ids = _batch(chaos_client, 100)
        done = _wait_done(chaos_client, batch.id)
        assert (done.counts.completed, done.counts.total) == (100, 100)
        failures = sum(1 for x in fresh_teacher_api.exchanges if x.status >= 500)
        assert failures > 5
        ok_per_prompt = Counter(
            x.request["messages"][0]["content"]
            for x in fresh_teacher_api.exchanges
            if x.status == 200
        )
        assert sorted(ok_per_prompt.values()) == [1] * 100
        retried = [r for r in run_ids if chaos_client.get_run(r).attempt > 1]
        assert len(retried) > 0
    finally:
        worker.stop()


def _insert_completed_runs(collector: CollectorEnvironment, batch_id: str, n: int) -> None:
    """Many completed runs (64 tokens, top-5 each) straight into PostgreSQL."""
    execute(
        collector,
        """
        INSERT INTO runs (id, batch_id, status, variables, messages, attempt, output_text,
                          finish_reason, has_logprobs, token_texts, token_logprobs, top_counts,
                          top_tokens, top_logprobs, input_tokens, output_tokens, scores)
        SELECT 'run_bulk' || lpad(i::text, 9, '0'), $1, 'completed', '{"x": "y"}',
               '[{"role": "user", "content": "Say y"}]', 1, repeat('word ', 40) || i, 'stop', true,
               array_fill('tok'::text, ARRAY[64]), array_fill(-0.5::float8, ARRAY[64]),
               array_fill(5, ARRAY[64]), array_fill('alt'::text, ARRAY[320]),
               array_fill(-1.7::float8, ARRAY[320]), 4, 64, '{}'
        FROM generate_series(1, $2) AS i
        """,
        batch_id,
        n,
    )


def _staged_bytes(folder: Path) -> int:
    """Bytes written so far in the staging folders of the dataset at `folder`."""
    total = 0
    for path in folder.parent.glob(f".{folder.name}.tmp-*/**/*"):
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            total += path.stat().st_size if path.is_file() else 0
    return total


def test_dataset_build_killed_midway_leaves_nothing_partial(
    chaos_client: Client,
    chaos_env: dict[str, str],
    server_only: CollectorEnvironment,
    tmp_path: Path,
) -> None:
    template = chaos_client.create_template(
        unique("bulk"), user_template="Say {{ x }}", variables=["x"]
    )
    batch = chaos_client.create_batch(unique("bulk"), template.id, "mock", "mock-1")
    _insert_completed_runs(server_only, batch.id, 20_000)
    env = {**chaos_env, "DATASET_LEASE_S": "2"}
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    started = chaos_client.build_dataset(unique("bulk"), "v1", [batch.id])
    folder = Path(urlparse(started.uri).path)
    try:
        deadline = time.monotonic() + 60
        while not _staged_bytes(folder):  # the build has written part of the dataset
            assert time.monotonic() < deadline, (tmp_path / "worker1.log").read_text()[-3000:]
            time.sleep(0.02)
        first.kill9()
    finally:
        first.stop()
    assert not folder.exists()  # nothing partial under the dataset's name
    assert chaos_client.get_dataset(started.id).status == DatasetStatus.BUILDING
    second = WorkerProcess(env, tmp_path / "worker2.log").start()
    try:
        ready = chaos_client.wait_dataset(started.id, timeout=120)
    finally:
        second.stop()
    assert ready.status == DatasetStatus.READY and ready.counts.kept == 20_000
    assert verify_dataset(folder) == []
    assert not list(folder.parent.glob(".*.tmp-*"))  # the dead build's staging folder is gone
