"""The arq worker: thin job functions calling into the domain services, plus the
reconciler loop. Jobs carry ids only; PostgreSQL holds everything else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import RedisSettings, create_pool
from arq.worker import Retry, Worker, func

from nex.collector.server.bootstrap import Container
from nex.collector.server.queue import (
    BUILD_DATASET,
    BUILD_DATASET_PART,
    DELIVER_EVIDENCE,
    EXECUTE_RUN,
    job_timeouts,
)
from nex.collector.server.services.throttle import Throttled
from nex.collector.server.supervisor import is_outage, supervise
from nex.collector.server.worker.arq_worker import BatchStartWorker

log = logging.getLogger(__name__)

# A part of a dataset build is CPU-bound: a worker process writes one at a time,
# so that the parts of a build spread over the worker processes (arq hands a
# worker every job it can take). A part job that finds this worker busy goes
# back to the queue for another worker (or for this one, once free).
PART_BUSY_DEFER_S = 0.2
PART_MAX_TRIES = 1_000_000


def job_functions(container: Container) -> list[Any]:
    s = container.settings

    async def execute_run(ctx: dict[str, Any], run_id: str) -> str:
        try:
            return await container.executor.execute(run_id)
        except Throttled as throttled:  # the run is queued again; so is its job, deferred
            raise Retry(defer=throttled.delay_s) from None

    async def build_dataset(ctx: dict[str, Any], dataset_id: str) -> str:
        return await container.datasets.run_build(dataset_id)

    part_slot = asyncio.Semaphore(1)

    async def build_dataset_part(ctx: dict[str, Any], part_job_id: str) -> str:
        if part_slot.locked():
            raise Retry(defer=PART_BUSY_DEFER_S)
        async with part_slot:
            return await container.datasets.run_part(part_job_id, container.heartbeat.worker_id)

    async def deliver_evidence(ctx: dict[str, Any], link_id: str) -> str:
        return await container.evidence.deliver(link_id)

    timeouts = job_timeouts(s)
    return [
        func(execute_run, name=EXECUTE_RUN, timeout=timeouts[EXECUTE_RUN], keep_result=0),
        func(build_dataset, name=BUILD_DATASET, timeout=timeouts[BUILD_DATASET], keep_result=0),
        func(
            build_dataset_part,
            name=BUILD_DATASET_PART,
            timeout=timeouts[BUILD_DATASET_PART],
            keep_result=0,
            max_tries=PART_MAX_TRIES,  # a busy worker hands the part back (above)
        ),
        func(
            deliver_evidence,
            name=DELIVER_EVIDENCE,
            timeout=timeouts[DELIVER_EVIDENCE],
            keep_result=0,
        ),
    ]


async def _reconcile_forever(container: Container, stop: asyncio.Event) -> None:
    """A pass every RECONCILE_INTERVAL_S; a failed pass crashes the loop, which its
    supervisor logs and restarts."""
    while not stop.is_set():
        await container.reconciler.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), container.settings.reconcile_interval_s)


async def _sweep_staging(container: Container) -> None:
    """Once at start-up: staging folders of dataset builds that died (the next
    build of the same version removes its own too)."""
    try:
        removed = await container.datasets.sweep_staging()
    except Exception as exc:  # storage down: the builds still clean up after themselves
        log.warning("could not sweep dataset staging folders: %s", exc)
        return
    if removed:
        log.info("removed %d staging folders of dead dataset builds", len(removed))


async def _provider_jobs_forever(container: Container, stop: asyncio.Event) -> None:
    """Provider batch jobs: grouped, submitted, polled and ingested from
    PostgreSQL's state alone, so any worker resumes what another left."""
    while not stop.is_set():
        await container.provider_jobs.tick()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), container.settings.provider_job_tick_s)


async def run_worker(container: Container, stop: asyncio.Event) -> None:
    """Runs arq until `stop`; when arq's loop dies (Redis restarted, network), a new
    one starts while the jobs in flight finish on their own."""
    await container.heartbeat.start()  # alive before taking any job
    await _sweep_staging(container)
    reconciler = supervise("reconciler", lambda: _reconcile_forever(container, stop), stop=stop)
    provider_jobs = supervise(
        "provider-jobs", lambda: _provider_jobs_forever(container, stop), stop=stop
    )
    workers: list[Worker] = []
    try:
        while not stop.is_set():
            try:
                worker = await _new_worker(container)
            except Exception as exc:
                log.warning("worker cannot reach Redis (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                continue
            workers.append(worker)
            main = asyncio.create_task(worker.async_run(), name="arq-worker")
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({main, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            crash = main.exception() if main.done() and not main.cancelled() else None
            if crash is not None:
                # Redis away is expected (one line); anything else keeps its traceback.
                log.warning(
                    "worker loop stopped (%s); starting a new one",
                    crash,
                    exc_info=None if is_outage(crash) else crash,
                )
                await asyncio.sleep(0.5)
            else:
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await main
    finally:
        stop.set()
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.close()
        for loop_task in (reconciler, provider_jobs):
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loop_task
        await container.executor.aclose()
        await container.heartbeat.aclose()


async def _new_worker(container: Container) -> Worker:
    s = container.settings
    pool = await create_pool(RedisSettings.from_dsn(container.redis_url), retry=0)
    return BatchStartWorker(
        functions=job_functions(container),
        redis_pool=pool,
        max_jobs=s.worker_max_jobs,
        poll_delay=0.02,
        queue_read_limit=s.worker_max_jobs * 4,
        keep_result=0,
        max_tries=20,
        handle_signals=False,
        owner=container.heartbeat.worker_id,
    )
