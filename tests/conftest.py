"""Fixtures: real PostgreSQL + Redis (embedded or from DATABASE_URL / REDIS_URL),
a fake teacher at the wire, and a real collector reached through the shipped client."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from nex.collector.client import Client, connect
from nex.collector.server.testing import CollectorEnvironment
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing, backing_services
from tests.support.collector import collector_settings
from tests.support.processes import RedisProcess
from tests.support.s3 import S3Server, s3_server

TEACHER_KEY = "sk-test-secret-key-0123456789"

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE: "default" keeps `make test`
# quick and repeatable (the same examples each run); "fuzz" (`make fuzz`) explores.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]
settings.register_profile(
    "default", max_examples=12, deadline=None, derandomize=True, suppress_health_check=_SLOW_OK
)
settings.register_profile("fuzz", max_examples=200, deadline=None, suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


# Each test gets the marker of its folder (`pytest -m unit`, `-m "not chaos"`):
#   unit         pure code, no servers
#   contract     what we take from arq, against a real Redis (one embedded pair)
#   providers    the provider adapters through the real SDKs, against the fake teacher
#   integration  repositories, limiter, migrations, object store on real PostgreSQL/Redis/S3
#   e2e          a real collector through the shipped client and CLI
#   chaos        killed workers, lost Redis, rate limits: slow by design
#   fuzz         hostile requests and templates (Hypothesis)
#   docs         every code block of README.md and docs/
# `make test-fast` runs unit, contract and providers: under a minute on two cores.
FOLDER_MARKERS = ("unit", "contract", "providers", "integration", "e2e", "chaos", "fuzz", "docs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        folder = item.path.relative_to(here).parts[0] if item.path.is_relative_to(here) else ""
        if folder in FOLDER_MARKERS:
            item.add_marker(folder)


def unique(prefix: str) -> str:
    """A name no other test uses (the database is shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def backing() -> Iterator[Backing]:
    # Not under pytest's tmp_path: pytest prunes old base folders, and another
    # pytest session on the machine could remove a live embedded database.
    with tempfile.TemporaryDirectory(prefix="nexc-test-") as tmp, backing_services(Path(tmp)) as b:
        yield b


@pytest.fixture(scope="session")
def teacher_api() -> Iterator[FakeTeacherAPI]:
    """A local HTTP server speaking the OpenAI and Anthropic APIs."""
    api = FakeTeacherAPI(api_key=TEACHER_KEY).start_in_thread()
    try:
        yield api
    finally:
        api.stop_thread()


@pytest.fixture
def fresh_teacher_api(teacher_api: FakeTeacherAPI) -> FakeTeacherAPI:
    """The fake teacher with counters, script and faults reset for one test."""
    teacher_api.reset()
    teacher_api.latency_s = 0.0
    teacher_api.failure_rate = 0.0
    return teacher_api


def teacher_settings(api: FakeTeacherAPI) -> dict[str, object]:
    return {
        "OPENAI_BASE_URL": api.openai_base_url,
        "OPENAI_API_KEY": TEACHER_KEY,
        "ANTHROPIC_BASE_URL": api.anthropic_base_url,
        "ANTHROPIC_API_KEY": TEACHER_KEY,
        "TEACHER_TIMEOUT_S": 5.0,
    }


@pytest.fixture(scope="session")
def collector(
    backing: Backing, teacher_api: FakeTeacherAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorEnvironment]:
    settings = collector_settings(
        backing, Path(tmp_path_factory.mktemp("data")), **teacher_settings(teacher_api)
    )
    with CollectorEnvironment(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(collector: CollectorEnvironment) -> Iterator[Client]:
    """The shipped blocking client, authenticated."""
    with connect(collector.address, token=collector.token) as c:
        yield c


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A real S3-compatible server (moto's) on a free loopback port."""
    with s3_server() as server:
        yield server


@pytest.fixture
def own_backing(backing: Backing) -> Iterator[Backing]:
    """A database and Redis database of this test's own (for collectors and
    worker processes that must not share jobs with the session's)."""
    with backing.isolated() as own:
        yield own


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis server process of this test's own, to stop, flush or kill."""
    server = RedisProcess(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()
