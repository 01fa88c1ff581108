"""Provider batch jobs survive `kill -9` of the worker driving them: real
worker processes, real PostgreSQL and Redis, the fake OpenAI Batch API. The
next worker resumes from PostgreSQL alone: no job is uploaded or created twice
and every run is ingested once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nex.collector.client import Client, ExecutionMode, GenerationParams, RunStatus, connect
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import TEACHER_KEY, teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import serving_for_worker_processes
from tests.support.db import fetch_all
from tests.support.processes import RedisProcess, WorkerProcess


@pytest.fixture
def api() -> Iterator[FakeTeacherAPI]:
    fake = FakeTeacherAPI(api_key=TEACHER_KEY).start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture
def env(
    own_backing: Backing, api: FakeTeacherAPI, redis: RedisProcess, tmp_path: Path
) -> dict[str, str]:
    values: dict[str, object] = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": redis.url,
        "DATA_DIR": str(tmp_path / "data"),
        "RECONCILE_INTERVAL_S": "0.5",
        "RUN_LEASE_S": "2",  # a killed worker's heartbeat expires within 2 s
        "PROVIDER_JOB_TICK_S": "0.05",
        "PROVIDER_JOB_POLL_S": "0.02",
        "PROVIDER_JOB_MAX_POLL_S": "0.1",
        "PROVIDER_JOB_INGEST_CHUNK": "2",
        "LOG_LEVEL": "INFO",
        **teacher_settings(api),
    }
    return {k: str(v) for k, v in values.items()}


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


def _until(what: Callable[[], bool], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        time.sleep(0.05)


def _provider_batch(client: Client, n: int) -> str:
    template = client.create_template(unique("k9"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("k9"),
        template.id,
        "openai",
        "gpt-4o-mini",
        params=GenerationParams(max_tokens=8, top_logprobs=2),
        execution_mode=ExecutionMode.PROVIDER_BATCH,
    )
    client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(n)])
    return batch.id


# "ingesting" only in the suite: the in-process crashes of
# tests/e2e/test_provider_batch.py cover upload and create, and "polling"
# adds a worker start (a few seconds) for what "ingesting" shows as well.
@pytest.mark.parametrize("kill_while", ["ingesting"])
def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(
    env: dict[str, str],
    server: CollectorEnvironment,
    client: Client,
    api: FakeTeacherAPI,
    tmp_path: Path,
    kill_while: str,
) -> None:
    log = tmp_path / "workers.log"
    if kill_while == "polling":
        api.batches.hold = True  # the job stays in progress until released
    else:
        api.batches.line_delay_s = 0.3  # results come slowly, two per transaction
    first = WorkerProcess(env, log).start()
    batch_id = _provider_batch(client, 10)
    try:
        if kill_while == "polling":
            _until(lambda: any(j.state == "in_progress" for j in api.batches.jobs.values()), log)
        else:
            _until(lambda: client.get_batch(batch_id).counts.completed >= 2, log)
        first.kill9()
        assert client.get_batch(batch_id).counts.completed < 10
        api.batches.hold, api.batches.line_delay_s = False, 0.0
        second = WorkerProcess(env, log).start()
        try:
            for _ in client.watch_batch(batch_id):
                pass
        finally:
            second.stop()
    finally:
        if first.proc is not None:
            first.stop()
    done = client.get_batch(batch_id)
    assert done.counts.completed == 10
    assert (api.batches.uploads, api.batches.created["openai"]) == (1, 1)
    assert all(client.get_run(r.id).attempt == 1 for r in client.list_runs(batch_id))
    completions = fetch_all(
        server,
        "SELECT run_id, count(*) AS n FROM run_events WHERE batch_id = $1 "
        "AND status = $2 GROUP BY run_id",
        batch_id,
        RunStatus.COMPLETED.name.lower(),
    )
    assert len(completions) == 10 and all(r["n"] == 1 for r in completions)
