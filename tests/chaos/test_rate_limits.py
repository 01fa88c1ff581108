"""One rate limit shared by several real worker processes, against a fake
teacher that enforces its limit the way OpenAI does (per-second windows, 429
with retry-after and x-ratelimit-* headers). A 429 or a wait never uses up a
run's attempts; a Redis FLUSHDB loses no run. Small limits keep these quick."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from nex.collector.client import (
    BatchStatus,
    Client,
    GenerationParams,
    RunStatus,
    TeacherBatch,
    connect,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import TEACHER_KEY, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.processes import RedisProcess, WorkerProcess

RPM = 1200  # 20 a second
KEY_ENV = "NEXC_TEST_LIMITED_KEY"
WORKERS = 3
# Three worker processes starting on a loaded machine can take a minute.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def limited_api() -> Iterator[FakeTeacherAPI]:
    api = FakeTeacherAPI(
        api_key=TEACHER_KEY, latency_s=0.1, requests_per_min=RPM, answer_tokens=200, record=False
    ).start_in_thread()
    try:
        yield api
    finally:
        api.stop_thread()


def _env(own: Backing, redis: RedisProcess, api: FakeTeacherAPI, tmp: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": own.database_url,
        "REDIS_URL": redis.url,
        "DATA_DIR": str(tmp / "data"),
        "RECONCILE_INTERVAL_S": "0.5",
        "WORKER_MAX_JOBS": "64",  # 192 at once against 20 a second: far past the limit
        "TEACHER_TIMEOUT_S": "5",
        "OPENAI_BASE_URL": api.openai_base_url,
        "OPENAI_API_KEY": TEACHER_KEY,
        KEY_ENV: TEACHER_KEY,
        "LOG_LEVEL": "WARNING",
    }


class Deployment:
    def __init__(self, env: dict[str, str], own: Backing, tmp: Path) -> None:
        self.env, self.own, self.tmp = env, own, tmp

    def __enter__(self) -> Client:
        os.environ[KEY_ENV] = TEACHER_KEY
        overrides = {k: v for k, v in self.env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
        overrides = {k: v for k, v in overrides.items() if k != KEY_ENV}
        settings = collector_settings(self.own, self.tmp / "data", **overrides)
        self._server = CollectorEnvironment(settings, work=False)
        running = self._server.__enter__()
        self._workers = [
            WorkerProcess(self.env, self.tmp / f"worker{i}.log").start() for i in range(WORKERS)
        ]
        self._client = connect(running.address, token=running.token)
        deadline = time.monotonic() + 120
        while not all("nex-collector ready" in self.log(i) for i in range(WORKERS)):
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.1)
        return self._client.__enter__()

    def log(self, i: int) -> str:
        path = self.tmp / f"worker{i}.log"
        return path.read_text() if path.exists() else ""

    def __exit__(self, *exc: object) -> None:
        self._client.__exit__(None, None, None)
        for w in self._workers:
            w.stop()
        self._server.__exit__(None, None, None)
        os.environ.pop(KEY_ENV, None)

    def logs(self) -> str:
        return "\n".join((self.tmp / f"worker{i}.log").read_text()[-2000:] for i in range(WORKERS))


def _batch(client: Client, provider: str, n: int) -> TeacherBatch:
    template = client.create_template(unique("rl"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("rl"),
        template.id,
        provider,
        "gpt-4o-mini",
        params=GenerationParams(top_logprobs=5, max_tokens=300),
    )
    client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(n)])
    return batch


def _wait_done(
    client: Client, batch_id: str, logs: Deployment, timeout: float = 120
) -> TeacherBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get_batch(batch_id)
        if batch.status == BatchStatus.COMPLETED:
            return batch
        time.sleep(0.25)
    raise AssertionError(
        f"batch did not finish: {client.get_batch(batch_id).counts}\n{logs.logs()}"
    )


def _assert_within_limit(api: FakeTeacherAPI, done: TeacherBatch, n: int) -> None:
    assert (done.counts.completed, done.counts.failed) == (n, 0)
    assert api.served >= n  # more when a call timed out on a loaded machine and was retried
    assert api.rate_limited <= 0.10 * api.served, (api.rate_limited, api.served)


def test_a_batch_far_past_a_configured_limit_fails_nothing(
    own_backing: Backing, redis: RedisProcess, limited_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    teachers = tmp_path / "teachers.toml"
    teachers.write_text(
        "[teachers.limited]\n"
        'kind = "openai-compatible"\n'
        f'base_url = "{limited_api.openai_base_url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        "[teachers.limited.limits]\n"
        f"requests_per_min = {RPM}\n"
    )
    env = _env(own_backing, redis, limited_api, tmp_path) | {"TEACHERS_FILE": str(teachers)}
    deployment = Deployment(env, own_backing, tmp_path)
    with deployment as client:
        batch = _batch(client, "limited", 80)
        done = _wait_done(client, batch.id, deployment)
        _assert_within_limit(limited_api, done, 80)
        # Nobody used an attempt waiting: every run completed at its first.
        runs = list(client.list_runs(batch.id))
        assert {r.attempt for r in runs} == {1}
        # Watchers saw why runs waited.
        throttled = [
            e for e in client.watch_runs(batch_id=batch.id)
            if e.status == RunStatus.QUEUED and e.error and e.error.code == "THROTTLED"
        ]  # fmt: skip
        assert throttled


def test_limits_are_learned_with_nothing_configured_and_survive_flushdb(
    own_backing: Backing, redis: RedisProcess, limited_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    env = _env(own_backing, redis, limited_api, tmp_path)
    deployment = Deployment(env, own_backing, tmp_path)
    with deployment as client:
        batch = _batch(client, "openai", 120)
        deadline = time.monotonic() + 60
        while client.get_batch(batch.id).counts.completed < 40:
            assert time.monotonic() < deadline, deployment.logs()
            time.sleep(0.1)
        redis_sync.Redis.from_url(redis.url).flushdb()  # jobs, learned limits, bookings: gone
        done = _wait_done(client, batch.id, deployment)
        assert (done.counts.completed, done.counts.failed) == (120, 0)
        assert limited_api.served >= 120
        assert limited_api.rate_limited <= 0.10 * limited_api.served, (
            limited_api.rate_limited,
            limited_api.served,
        )
