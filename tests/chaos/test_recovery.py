"""Recovery that never fights live workers, and attempts that mean teacher
failures: real worker processes, a real PostgreSQL and Redis, the fake teacher."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix
from redis import Redis

from nex.collector.client import (
    BatchStatus,
    Client,
    GenerationParams,
    RunStatus,
    TeacherBatch,
    connect,
)
from nex.collector.server.db.locks import EVENTS_LOCK
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI, Scripted
from tests.support.backing import Backing
from tests.support.collector import serving_for_worker_processes
from tests.support.db import fetch_all
from tests.support.locks import holding_events_lock
from tests.support.processes import RedisProcess, WorkerProcess


@pytest.fixture
def env(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, redis: RedisProcess, tmp_path: Path
) -> dict[str, str]:
    values = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": redis.url,
        "DATA_DIR": str(tmp_path / "data"),
        "RECONCILE_INTERVAL_S": "0.5",
        "LOG_LEVEL": "INFO",
    }
    values.update({k: str(v) for k, v in teacher_settings(fresh_teacher_api).items()})
    return values


@pytest.fixture
def server(
    env: dict[str, str], own_backing: Backing, tmp_path: Path
) -> Iterator[CollectorEnvironment]:
    with serving_for_worker_processes(env, own_backing, tmp_path / "data") as running:
        yield running


@pytest.fixture
def client(server: CollectorEnvironment) -> Iterator[Client]:
    with connect(server.address, token=server.token) as c:
        yield c


def _batch(client: Client, n: int) -> tuple[TeacherBatch, list[str]]:
    template = client.create_template(unique("rec"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("rec"), template.id, "openai", "gpt-4o-mini", params=GenerationParams(max_tokens=8)
    )
    runs = client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(n)])
    return batch, [r.id for r in runs]


def _wait_done(client: Client, batch_id: str, log: Path, timeout: float = 60) -> TeacherBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get_batch(batch_id)
        if batch.status == BatchStatus.COMPLETED:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch did not finish: {client.get_batch(batch_id).counts}\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else ""


def _answers_per_prompt(api: FakeTeacherAPI) -> Counter[str]:
    return Counter(x.request["messages"][0]["content"] for x in api.exchanges if x.status == 200)


def _wait_started(redis: RedisProcess, n: int, log: Path, timeout: float = 60) -> None:
    """Until n jobs are started (arq's in-progress markers)."""
    r = Redis.from_url(redis.url)
    deadline = time.monotonic() + timeout
    while sum(1 for _ in r.scan_iter(in_progress_key_prefix + "*")) < n:
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.1)


def test_slow_claims_are_never_taken_from_a_live_worker(
    client: Client,
    env: dict[str, str],
    own_backing: Backing,
    redis: RedisProcess,
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    """Claims stuck for longer than the reconciler's old grace period (5 s) on the
    events lock: the workers are alive and say so, so the jobs they started stay
    theirs. No job is started twice (by the same worker or another), no
    traceback, every run completes once."""
    fresh_teacher_api.latency_s = 0.05
    batch, run_ids = _batch(client, 6)
    logs = [tmp_path / "worker1.log", tmp_path / "worker2.log"]
    workers = [WorkerProcess({**env, "WORKER_MAX_JOBS": "8"}, log) for log in logs]
    try:
        with holding_events_lock(own_backing.database_url, EVENTS_LOCK):
            for worker in workers:
                worker.start()
            _wait_started(redis, len(run_ids), logs[0])
            time.sleep(8)  # claims wait on the lock; the reconciler runs every 0.5 s
        done = _wait_done(client, batch.id, logs[0])
    finally:
        for worker in workers:
            worker.stop()
    text = "".join(log.read_text(errors="replace") for log in logs)
    assert "Traceback" not in text and "KeyError" not in text, text[-4000:]
    assert "already running here" not in text, text[-4000:]
    assert (done.counts.completed, done.counts.total) == (6, 6)
    assert sorted(_answers_per_prompt(fresh_teacher_api).values()) == [1] * 6
    assert {client.get_run(r).attempt for r in run_ids} == {1}


def test_an_answer_is_stored_at_once_even_while_run_events_wait(
    client: Client,
    env: dict[str, str],
    own_backing: Backing,
    server: CollectorEnvironment,
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    """The teacher answers while every run-status change waits on the events
    lock: the answer is committed anyway, so the worker killed right then loses
    nothing, and the next worker completes the run from it without paying for
    it again."""
    fresh_teacher_api.script(Scripted(delay_s=2))  # time to take the lock meanwhile
    batch, (run_id,) = _batch(client, 1)
    log = tmp_path / "worker1.log"
    first = WorkerProcess({**env, "RUN_LEASE_S": "2"}, log).start()
    try:
        deadline = time.monotonic() + 60
        while fresh_teacher_api.total_requests < 1:  # claimed, and at the teacher
            assert time.monotonic() < deadline, _tail(log)
            time.sleep(0.02)
        with holding_events_lock(own_backing.database_url, EVENTS_LOCK):
            deadline = time.monotonic() + 30
            while not fetch_all(
                server, "SELECT 1 FROM runs WHERE id = $1 AND answer_time IS NOT NULL", run_id
            ):
                assert time.monotonic() < deadline, "the answer was not stored\n" + _tail(log)
                time.sleep(0.05)
            first.kill9()
    finally:
        first.stop()
    second = WorkerProcess({**env, "RUN_LEASE_S": "2"}, tmp_path / "worker2.log").start()
    try:
        _wait_done(client, batch.id, tmp_path / "worker2.log")
    finally:
        second.stop()
    run = client.get_run(run_id)
    assert run.status == RunStatus.COMPLETED and run.output_text
    assert fresh_teacher_api.total_requests == 1  # paid once
    (answer,) = [x for x in fresh_teacher_api.exchanges if x.status == 200]
    assert run.output_text == answer.response["choices"][0]["message"]["content"]


def test_a_lost_worker_does_not_use_up_teacher_attempts(
    client: Client, env: dict[str, str], fresh_teacher_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    """Two teacher calls allowed. The first fails (503); the worker is killed
    during the second, its last. That death is not a teacher failure: the next
    worker calls once more. When that call fails too, the run fails with the
    teacher's error, and its message says what happened."""
    env = {**env, "TEACHER_MAX_ATTEMPTS": "2", "RUN_LEASE_S": "2"}
    fresh_teacher_api.script(
        Scripted(503),  # call 1: a teacher failure
        Scripted(delay_s=4),  # call 2: the worker is killed while waiting for it
        Scripted(503),  # call 3: the teacher fails again
    )
    batch, (run_id,) = _batch(client, 1)
    first = WorkerProcess(env, tmp_path / "worker1.log").start()
    try:
        deadline = time.monotonic() + 60
        while fresh_teacher_api.total_requests < 2:
            assert time.monotonic() < deadline, _tail(tmp_path / "worker1.log")
            time.sleep(0.05)
        first.kill9()
    finally:
        first.stop()
    log = tmp_path / "worker2.log"
    second = WorkerProcess(env, log).start()
    try:
        _wait_done(client, batch.id, log)
    finally:
        second.stop()
    run = client.get_run(run_id)
    assert run.error is not None, run
    assert run.error.code == "PROVIDER_UNAVAILABLE", run.error
    assert "teacher failed 2 times" in run.error.message, run.error.message
    assert "worker lost 1 time" in run.error.message, run.error.message
    assert fresh_teacher_api.total_requests == 3
    assert run.attempt == 3


def test_chaos_no_run_fails_for_a_dead_worker_and_nothing_is_lost(
    client: Client,
    env: dict[str, str],
    redis: RedisProcess,
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    """Three workers, one killed with SIGKILL three times over (a new one takes
    its place), Redis flushed, a teacher failing a fifth of its calls: every run
    completes, none fails because a worker died, no worker logs a traceback, and
    the event log holds each run's completion once, in revision order."""
    n = 200
    env = {
        **env,
        "RUN_LEASE_S": "2",
        "TEACHER_MAX_ATTEMPTS": "8",
        "WORKER_MAX_JOBS": "32",
        "LOG_LEVEL": "WARNING",
    }
    fresh_teacher_api.latency_s = 0.1
    fresh_teacher_api.failure_rate = 0.2
    logs: list[Path] = []

    def start_worker() -> WorkerProcess:
        logs.append(tmp_path / f"worker{len(logs)}.log")
        return WorkerProcess(env, logs[-1]).start()

    workers = [start_worker() for _ in range(3)]
    try:
        batch, run_ids = _batch(client, n)
        deadline = time.monotonic() + 120
        for step, share in enumerate((0.15, 0.35, 0.5, 0.65)):
            while client.get_batch(batch.id).counts.completed < share * n:
                assert time.monotonic() < deadline, _tail(logs[-1])
                time.sleep(0.05)
            if step == 2:
                Redis.from_url(redis.url).flushdb()  # every queued and started job is gone
            else:
                victim = workers.pop(step % len(workers))
                victim.kill9()
                workers.append(start_worker())
        done = _wait_done(client, batch.id, logs[-1], timeout=120)
    finally:
        for worker in workers:
            worker.stop()
    assert (done.counts.completed, done.counts.total) == (n, n), done.counts
    for log in logs:
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, f"{log.name}:\n{text[-4000:]}"
    events = list(client.watch_batch(batch.id))
    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions))
    completed = Counter(e.run_id for e in events if e.status == RunStatus.COMPLETED)
    assert completed == dict.fromkeys(run_ids, 1)
    assert all(client.get_run(r).output_text for r in run_ids)
