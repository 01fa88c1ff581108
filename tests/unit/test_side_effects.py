"""Side effects, process by process: nothing blocks the event loop, background
tasks are supervised, retryable statuses say when to retry, and what a build
writes is not world-readable."""

from __future__ import annotations

import asyncio
import logging
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy.pool import QueuePool

from nex.collector.server import bootstrap
from nex.collector.server.api.errors import status_for
from nex.collector.server.config import load_settings
from nex.collector.server.db.engine import make_engine
from nex.collector.server.domain import errors as domain
from nex.collector.server.domain.scoring import MetricRegistry
from nex.collector.server.domain.teacher import CompletedRun
from nex.collector.server.embedded import EmbeddedRedis, EmbeddedServices
from nex.collector.server.parquet import build_dataset
from nex.collector.server.supervisor import supervised
from tests.unit.distill_factories import synthetic_runs


async def test_a_cancelled_build_cleans_up_without_blocking_the_loop(tmp_path: Path) -> None:
    """The chunk in the thread is released by a callback on the event loop: if
    the cleanup waited for that thread on the loop, the callback could not run
    (before: the chunk was released only by its own timeout)."""
    entered, gate = threading.Event(), threading.Event()
    released_by_loop: list[bool] = []

    def blocking_metric(run: CompletedRun) -> float:
        if not entered.is_set():
            entered.set()
            released_by_loop.append(gate.wait(5))
        return 0.0

    async def chunks() -> AsyncIterator[list[CompletedRun]]:
        yield synthetic_runs(5)
        await asyncio.Event().wait()
        yield []  # pragma: no cover

    task = asyncio.create_task(
        build_dataset(
            chunks(),
            filters=[],
            metrics=MetricRegistry({"slow": blocking_metric}),
            final_dir=tmp_path / "v1",
            manifest_extra={},
        )
    )
    assert await asyncio.to_thread(entered.wait, 10)
    task.cancel()
    asyncio.get_running_loop().call_later(0.01, gate.set)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert released_by_loop == [True]
    assert _listing(tmp_path) == []


async def test_the_embedded_services_start_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.current_thread()
    started_in: list[threading.Thread] = []

    def start(data_dir: Path) -> EmbeddedServices:
        started_in.append(threading.current_thread())
        return EmbeddedServices(
            "postgresql+asyncpg://x/y", "redis://x/0", None, EmbeddedRedis(data_dir)
        )

    monkeypatch.setattr(bootstrap, "start_embedded", start)
    monkeypatch.delenv("DATABASE_URL", raising=False)  # CI runs the suite with them set too
    monkeypatch.delenv("REDIS_URL", raising=False)
    urls = await bootstrap.resolve_urls(load_settings(DATA_DIR=tmp_path))
    assert urls[:2] == ("postgresql+asyncpg://x/y", "redis://x/0")
    assert started_in and started_in[0] is not loop_thread


async def test_a_built_dataset_is_not_world_readable(tmp_path: Path) -> None:
    out = tmp_path / "datasets" / "name" / "v1"
    await build_dataset(
        _once(synthetic_runs(3)),
        filters=[],
        metrics=MetricRegistry(),
        final_dir=out,
        manifest_extra={},
    )
    paths = [out.parent, out, *_listing(out)]
    assert len(paths) == 8  # two folders, five Parquet files and the manifest
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, f"{path} is {oct(mode)}"
        assert mode == (0o750 if path.is_dir() else 0o640), f"{path} is {oct(mode)}"


def _listing(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def _once(runs: list[CompletedRun]) -> AsyncIterator[list[CompletedRun]]:
    yield runs


async def test_a_crashed_task_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("injected crash")
        stop.set()

    with caplog.at_level(logging.ERROR, logger="nex.collector.server.supervisor"):
        await asyncio.wait_for(supervised("test-task", body, stop=stop, first_backoff_s=0.01), 10)
    assert runs == 2
    (record,) = [r for r in caplog.records if "test-task" in r.getMessage()]
    assert record.exc_info is not None and "injected crash" in caplog.text
    assert "Traceback" in caplog.text


async def test_a_database_or_redis_outage_is_one_warning_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not a crash: PostgreSQL or Redis restarting is expected, so no traceback."""
    stop = asyncio.Event()
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ConnectionRefusedError("Connect call failed ('127.0.0.1', 5432)")
        stop.set()

    with caplog.at_level(logging.WARNING, logger="nex.collector.server.supervisor"):
        await asyncio.wait_for(supervised("backlog", body, stop=stop, first_backoff_s=0.01), 10)
    assert runs == 2
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "ConnectionRefusedError" in record.getMessage()


async def test_a_task_that_must_not_restart_stops_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()

    async def body() -> None:
        raise RuntimeError("injected crash")

    with caplog.at_level(logging.ERROR, logger="nex.collector.server.supervisor"):
        await asyncio.wait_for(supervised("worker", body, stop=stop, restart=False), 10)
    assert stop.is_set() and "stopping the process" in caplog.text and "Traceback" in caplog.text


def test_retryable_statuses_carry_retry_info() -> None:
    for error, code, delay in [
        (domain.Unavailable("NEX is down"), grpc.StatusCode.UNAVAILABLE, 1.0),
        (domain.ResourceExhausted("slow down"), grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0),
        (
            domain.ResourceExhausted("slow down", retry_after_s=2.5),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            2.5,
        ),
    ]:
        got, status = status_for(error)
        assert got == code
        infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(infos) == 1, f"{code.name} carries no RetryInfo"
        info = error_details_pb2.RetryInfo()
        infos[0].Unpack(info)
        assert info.retry_delay.ToTimedelta().total_seconds() == delay


def test_other_statuses_carry_no_retry_info() -> None:
    _, status = status_for(domain.FailedPrecondition("no"))
    assert not [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]


def test_the_database_pool_is_a_setting() -> None:
    settings = load_settings(DATABASE_POOL_SIZE=3, DATABASE_MAX_OVERFLOW=7)
    assert (settings.database_pool_size, settings.database_max_overflow) == (3, 7)
    engine = make_engine(
        "postgresql+asyncpg://u@localhost/db",
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.size() == 3
    assert engine.pool._max_overflow == 7
