"""Fixtures: real PostgreSQL + Redis (embedded or from DATABASE_URL / REDIS_URL),
and a real collector reached through the shipped client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nex.collector.client import Client, connect

from tests.support.backing import Backing, backing_services
from tests.support.collector import RunningCollector, collector_settings, running_collector


@pytest.fixture(scope="session")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backing]:
    with backing_services(Path(tmp_path_factory.mktemp("backing"))) as b:
        yield b


@pytest.fixture(scope="session")
def collector(
    backing: Backing, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningCollector]:
    settings = collector_settings(backing, Path(tmp_path_factory.mktemp("data")))
    with running_collector(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(collector: RunningCollector) -> Iterator[Client]:
    """The shipped blocking client, authenticated."""
    with connect(collector.address, token=collector.token) as c:
        yield c


def unique(prefix: str) -> str:
    """A name no other test uses (the database is shared by the session)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
