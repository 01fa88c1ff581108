"""What our queue (queue.py) and worker (worker/arq_worker.py) take from arq
beyond its documented API, pinned so that an arq upgrade that changes any of it
fails here, loudly, instead of losing or doubling jobs in production.

queue.py writes arq's Redis layout itself (a bulk enqueue in one Lua script, a
recovery pass that reads and frees in-progress markers); BatchStartWorker
overrides `Worker.start_jobs` and leans on `job_counter`, `sem`, `tasks`,
`run_job`, `handle_sig` and `in_progress_timeout_s`. If a test here fails after
an upgrade: read what it pins, adapt queue.py / arq_worker.py, then widen the
`arq` range in pyproject.toml. Against a real Redis, one database flushed per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from arq import constants
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, JobStatus, deserialize_job, serialize_job
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Function, Worker, func

from nex.collector.server.bootstrap import Container
from nex.collector.server.config import load_settings
from nex.collector.server.queue import EXECUTE_RUN, JobQueue, in_progress_ttl_ms, job_timeouts
from nex.collector.server.worker.arq_worker import BatchStartWorker
from nex.collector.server.worker.runner import job_functions
from tests.support.backing import Backing

PoolFactory = Callable[[], Awaitable[ArqRedis]]


@pytest.fixture(scope="module")
def redis_url(backing: Backing) -> Iterator[str]:
    """A Redis database no collector of the session polls."""
    with backing.isolated() as own:
        yield own.redis_url


@pytest.fixture
async def pools(redis_url: str) -> AsyncIterator[PoolFactory]:
    """Opens arq pools on the test's Redis database (flushed first); arq's
    `Worker.close` closes the pool it was given, so each worker gets its own."""
    opened: list[ArqRedis] = []

    async def new_pool() -> ArqRedis:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        opened.append(pool)
        return pool

    await (await new_pool()).flushdb()
    yield new_pool
    for pool in opened:
        with contextlib.suppress(Exception):
            await pool.aclose()


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Waits (up to 20 s: the machine may be busy) until `condition` holds."""
    deadline = time.monotonic() + 20
    while not await condition():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.01)


async def _stop(worker: Worker, run: asyncio.Task[None]) -> None:
    await worker.close()
    with contextlib.suppress(asyncio.CancelledError):
        await run


def _params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


# ------------------------------------------------------------- names and layout


def test_the_redis_key_layout() -> None:
    # queue.py's scripts and arq's worker must agree on every one of these.
    assert constants.default_queue_name == "arq:queue"
    assert constants.job_key_prefix == "arq:job:"
    assert constants.in_progress_key_prefix == "arq:in-progress:"
    assert constants.result_key_prefix == "arq:result:"
    assert constants.retry_key_prefix == "arq:retry:"
    assert constants.health_check_key_suffix == ":health-check"
    assert constants.expires_extra_ms == 86_400_000


def test_serialize_job_writes_what_arq_reads() -> None:
    assert _params(serialize_job) == [
        "function_name",
        "args",
        "kwargs",
        "job_try",
        "enqueue_time_ms",
        "serializer",
    ]
    job = deserialize_job(serialize_job(EXECUTE_RUN, ("run_1",), {}, None, 1_700_000_000_123))
    assert (job.function, job.args, job.kwargs) == (EXECUTE_RUN, ("run_1",), {})
    assert job.job_try is None
    assert job.enqueue_time == ms_to_datetime(1_700_000_000_123)


def test_timestamp_ms_is_unix_milliseconds() -> None:
    assert abs(timestamp_ms() - time.time() * 1000) < 1000


def test_redis_settings_read_our_unix_socket_urls() -> None:
    settings = RedisSettings.from_dsn("unix:///tmp/nexc/redis.socket?db=3")
    assert (settings.unix_socket_path, settings.database) == ("/tmp/nexc/redis.socket", 3)


def test_worker_methods_we_override_or_call() -> None:
    assert _params(Worker.start_jobs) == ["self", "job_ids"]
    assert _params(Worker.run_job) == ["self", "job_id", "score"]
    assert _params(Worker.handle_sig) == ["self", "signum"]
    # BatchStartWorker.finish_job ends many jobs in one transaction, as arq ends one.
    assert _params(Worker.finish_job) == [
        "self",
        "job_id",
        "finish",
        "result_data",
        "result_timeout_s",
        "keep_result_forever",
        "incr_score",
        "keep_in_progress",
    ]
    assert _params(Worker.close) == ["self"]
    assert _params(Worker.async_run) == ["self"]
    for method in (Worker.start_jobs, Worker.run_job, Worker.close, Worker.async_run):
        assert inspect.iscoroutinefunction(method), method
    init = inspect.signature(Worker.__init__).parameters
    for name in (
        "functions",
        "redis_pool",
        "max_jobs",
        "poll_delay",
        "queue_read_limit",
        "keep_result",
        "max_tries",
        "handle_signals",
    ):
        assert init[name].kind is inspect.Parameter.KEYWORD_ONLY or name == "functions", name
    assert {"name", "timeout", "keep_result"} <= set(_params(func))
    assert "retry" in _params(create_pool)  # the runner's worker pool fails fast: retry=0


# ------------------------------------------------------------- a real Worker


async def _noop(ctx: dict[str, Any], job_id: str) -> str:
    return job_id


async def test_a_worker_has_the_attributes_batch_start_uses(pools: PoolFactory) -> None:
    pool = await pools()
    worker = BatchStartWorker(
        functions=[func(_noop, name="noop", timeout=50)],
        redis_pool=pool,
        max_jobs=3,
        queue_read_limit=12,
        handle_signals=False,
    )
    assert worker.job_counter == 0
    assert worker.tasks == {}
    assert worker.max_jobs == 3
    assert worker.loop is asyncio.get_running_loop()
    assert worker.pool is pool
    assert worker.queue_name == constants.default_queue_name
    assert worker.health_check_key == constants.default_queue_name + ":health-check"
    # arq's marker lives for the longest job timeout plus 10 s.
    assert worker.in_progress_timeout_s == 50 + 10
    # max_jobs + 1 slots: arq's own start takes one before it checks the counter.
    assert isinstance(worker.sem, asyncio.BoundedSemaphore)
    for _ in range(worker.max_jobs + 1):
        await asyncio.wait_for(worker.sem.acquire(), 1)
    assert worker.sem.locked()
    for _ in range(worker.max_jobs + 1):
        worker.sem.release()


async def test_our_marker_ttl_is_the_one_arq_computes_for_our_functions() -> None:
    settings = load_settings()
    container = cast(Container, SimpleNamespace(settings=settings))
    functions = job_functions(container)
    assert {f.name: f.timeout_s for f in functions if isinstance(f, Function)} == job_timeouts(
        settings
    )
    worker = Worker(functions=functions, redis_settings=RedisSettings(), handle_signals=False)
    assert int(worker.in_progress_timeout_s * 1000) == in_progress_ttl_ms(settings)


async def test_the_poll_loop_hands_start_jobs_at_most_queue_read_limit_ids(
    pools: PoolFactory,
) -> None:
    pool = await pools()
    for i in range(5):
        await pool.enqueue_job("noop", f"j{i}", _job_id=f"j{i}")
    calls: list[list[bytes]] = []

    class Recording(Worker):
        async def start_jobs(self, job_ids: list[bytes]) -> None:
            calls.append(job_ids)

    worker = Recording(
        functions=[func(_noop, name="noop")],
        redis_pool=pool,
        queue_read_limit=2,
        poll_delay=0.01,
        handle_signals=False,
    )
    run = asyncio.create_task(worker.async_run())
    try:
        await _until(lambda: asyncio.sleep(0, bool(calls)), "start_jobs called")
    finally:
        await _stop(worker, run)
    assert calls[0] == [b"j0", b"j1"]


async def test_a_full_worker_reads_no_ids(pools: PoolFactory) -> None:
    pool = await pools()
    await pool.enqueue_job("noop", "j", _job_id="j")
    calls: list[list[bytes]] = []

    class Recording(Worker):
        async def start_jobs(self, job_ids: list[bytes]) -> None:
            calls.append(job_ids)

    worker = Recording(
        functions=[func(_noop, name="noop")],
        redis_pool=pool,
        max_jobs=2,
        poll_delay=0.01,
        handle_signals=False,
    )
    worker.job_counter = worker.max_jobs
    run = asyncio.create_task(worker.async_run())
    health = worker.health_check_key
    try:
        # The first poll ends by recording health, after it would have started jobs.
        await _until(lambda: pool.exists(health), "a first poll")
    finally:
        await _stop(worker, run)
    assert calls == []


async def test_arqs_start_marks_a_job_with_1_for_its_timeout_and_its_end_clears_it(
    pools: PoolFactory,
) -> None:
    # queue.recover tells arq's own markers ("1") from ours by this value.
    pool = await pools()
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(ctx: dict[str, Any], job_id: str) -> None:
        started.set()
        await release.wait()

    await pool.enqueue_job("hold", "j1", _job_id="j1")
    worker = Worker(
        functions=[func(hold, name="hold", timeout=60)],
        redis_pool=await pools(),
        poll_delay=0.01,
        keep_result=0,
        handle_signals=False,
    )
    run = asyncio.create_task(worker.async_run())
    try:
        await asyncio.wait_for(started.wait(), 20)
        marker = constants.in_progress_key_prefix + "j1"
        assert await pool.get(marker) == b"1"
        assert 60_000 < await pool.pttl(marker) <= 70_000
        assert list(worker.tasks) == ["j1"]
        release.set()

        async def cleared() -> bool:
            keys = (constants.job_key_prefix + "j1", marker, constants.retry_key_prefix + "j1")
            gone = await pool.exists(*keys) == 0
            return gone and await pool.zscore(constants.default_queue_name, "j1") is None

        await _until(cleared, "arq's finish_job removing the job, its marker and queue entry")
        assert await pool.exists(constants.result_key_prefix + "j1") == 0  # keep_result=0
    finally:
        await _stop(worker, run)


# --------------------------------------------------- our queue and our worker


async def test_jobs_we_enqueue_are_jobs_arq_reads_and_will_not_duplicate(
    pools: PoolFactory,
) -> None:
    pool = await pools()
    queue = JobQueue(pool, marker_ttl_ms=60_000)
    assert await queue.enqueue(EXECUTE_RUN, ["r1"]) == 1
    job = Job("r1", pool)
    assert await job.status() == JobStatus.queued
    info = await job.info()
    assert info is not None
    assert (info.function, info.args, info.kwargs) == (EXECUTE_RUN, ("r1",), {})
    expires = await pool.pttl(constants.job_key_prefix + "r1")
    assert constants.expires_extra_ms - 60_000 < expires <= constants.expires_extra_ms

    # One uniqueness rule: a job id that is queued, or has a result, is skipped.
    assert await pool.enqueue_job(EXECUTE_RUN, "r1", _job_id="r1") is None
    assert await pool.enqueue_job(EXECUTE_RUN, "r2", _job_id="r2") is not None
    assert await queue.enqueue(EXECUTE_RUN, ["r2"]) == 0
    await pool.set(constants.result_key_prefix + "r3", b"done")
    assert await pool.enqueue_job(EXECUTE_RUN, "r3", _job_id="r3") is None
    assert await queue.enqueue(EXECUTE_RUN, ["r3"]) == 0


async def test_batch_start_runs_what_we_enqueue_through_arqs_run_job(pools: PoolFactory) -> None:
    pool = await pools()
    ids = [f"r{i}" for i in range(12)]
    done: list[str] = []

    async def execute(ctx: dict[str, Any], job_id: str) -> None:
        done.append(job_id)

    assert await JobQueue(pool, marker_ttl_ms=60_000).enqueue(EXECUTE_RUN, ids) == len(ids)
    worker = BatchStartWorker(
        functions=[func(execute, name=EXECUTE_RUN, timeout=30, keep_result=0)],
        redis_pool=await pools(),
        max_jobs=4,
        poll_delay=0.01,
        keep_result=0,
        handle_signals=False,
    )
    run = asyncio.create_task(worker.async_run())
    try:
        await _until(lambda: _drained(pool), "the queue drained")
    finally:
        await _stop(worker, run)
    assert sorted(done) == sorted(ids)
    assert (worker.jobs_complete, worker.job_counter) == (len(ids), 0)
    assert await pool.keys("arq:*") == []  # no job, marker or retry key left behind


async def _drained(pool: ArqRedis) -> bool:
    queued = await pool.zcard(constants.default_queue_name)
    return queued == 0 and not await pool.keys(constants.in_progress_key_prefix + "*")


async def test_a_job_back_while_it_still_runs_here_runs_once_that_run_ends(
    pools: PoolFactory,
) -> None:
    """Redis lost the job's marker (FLUSHDB) and the job came back while this
    worker still runs it, its own Redis bookkeeping already done. The new start
    waits for the run in flight, then runs: it never leaves behind a marker that a
    live worker holds (the reconciler leaves those alone: the job would be stuck)."""
    pool = await pools()
    calls: list[str] = []

    async def execute(ctx: dict[str, Any], job_id: str) -> None:
        calls.append(job_id)

    await JobQueue(pool, marker_ttl_ms=60_000).enqueue(EXECUTE_RUN, ["r1"])
    worker = BatchStartWorker(
        functions=[func(execute, name=EXECUTE_RUN, timeout=30, keep_result=0)],
        redis_pool=await pools(),
        max_jobs=4,
        keep_result=0,
        handle_signals=False,
        owner="w1",
    )
    in_flight = asyncio.Event()
    worker.tasks["r1"] = asyncio.create_task(in_flight.wait())  # the run still ending here
    await worker.start_jobs([b"r1"])
    await asyncio.sleep(0.1)
    assert calls == []  # not twice at once
    assert await pool.get(constants.in_progress_key_prefix + "r1") == b"w1"
    in_flight.set()
    await _until(lambda: asyncio.sleep(0, calls == ["r1"]), "the job ran once the first run ended")
    await _until(lambda: _drained(pool), "its marker freed and the queue drained")
    await worker.close()


async def test_close_cancels_the_jobs_in_flight_and_waits_for_each(pools: PoolFactory) -> None:
    pool = await pools()
    running: set[str] = set()
    handed_back: list[str] = []

    async def slow(ctx: dict[str, Any], job_id: str) -> None:
        running.add(job_id)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # handing the run back takes a moment
            handed_back.append(job_id)
            raise

    await JobQueue(pool, marker_ttl_ms=60_000).enqueue("slow", ["a", "b", "c"])
    worker = BatchStartWorker(
        functions=[func(slow, name="slow", timeout=60)],
        redis_pool=await pools(),
        max_jobs=4,
        poll_delay=0.01,
        handle_signals=False,
    )
    run = asyncio.create_task(worker.async_run())
    await _until(lambda: asyncio.sleep(0, len(running) == 3), "three jobs running")
    # A run_job cancelled in its first Redis round trip, before arq's try around
    # the job, ends in CancelledError: arq's own close, gathering without
    # return_exceptions, would re-raise it and return while a, b and c still run.
    worker.tasks["d"] = asyncio.create_task(asyncio.sleep(3600))
    health = worker.health_check_key
    await _until(lambda: pool.exists(health), "the health check recorded")
    await _stop(worker, run)
    assert sorted(handed_back) == ["a", "b", "c"]  # before close returned
    assert all(task.done() for task in worker.tasks.values())
    assert await pool.exists(health) == 0
    await worker.close()  # a second close is a no-op
