"""The reconciler: PostgreSQL is the source of truth, Redis only a work list. It
re-enqueues queued runs whose job is gone (Redis restarted empty, an enqueue
failed) and requeues runs whose worker lease expired (a worker died)."""

from __future__ import annotations

import logging
from datetime import timedelta

from nex.collector.server import metrics
from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.batches import RunError
from nex.collector.server.domain.teacher import RunStatus
from nex.collector.server.queue import BUILD_DATASET, DELIVER_EVIDENCE, EXECUTE_RUN, JobQueue
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.common import now
from nex.collector.server.services.evidence import Evidence

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        evidence: Evidence,
        *,
        max_attempts: int,
        queued_grace: timedelta = timedelta(seconds=5),
        limit: int = 5000,
        budgets: Budgets | None = None,
    ) -> None:
        self._uow = uow
        self._budgets = budgets
        self._queue = queue
        self._evidence = evidence
        self._max_attempts = max_attempts
        self._grace = queued_grace
        self._limit = limit

    async def tick(self) -> tuple[int, int]:
        """One pass; returns (requeued after a lost worker, re-enqueued)."""
        requeued = await self._expired_leases()
        if self._budgets is not None and (resumed := await self._budgets.resume_new_day()):
            await self._queue.enqueue(EXECUTE_RUN, resumed)
        async with self._uow() as tx:
            stale = await tx.runs.stale_queued(now() - self._grace, self._limit)
            builds = await tx.datasets.stale_builds(now(), self._grace)
        enqueued = await self._queue.recover(
            EXECUTE_RUN, stale, grace_s=self._grace.total_seconds()
        )
        if builds:
            await self._queue.release(BUILD_DATASET, builds)
        if links := await self._evidence.due():
            await self._queue.enqueue(DELIVER_EVIDENCE, links)
        metrics.RUNS_RECOVERED.labels("lease_expired").inc(requeued)
        metrics.RUNS_RECOVERED.labels("job_lost").inc(enqueued)
        if requeued or enqueued:
            log.info(
                "reconciler: %d runs requeued after a lost worker, %d jobs re-enqueued",
                requeued,
                enqueued,
            )
        return requeued, enqueued

    async def _expired_leases(self) -> int:
        async with self._uow() as tx:
            rows = await tx.runs.expired_leases(now(), self._limit)
            if not rows:
                return 0
            give_up = [r for r in rows if r["attempt"] >= self._max_attempts]
            retry = [r for r in rows if r["attempt"] < self._max_attempts]
            error = RunError(
                "WORKER_LOST",
                f"the worker running this run stopped answering {self._max_attempts} times",
            )
            if give_up:
                await tx.runs.fail_many(
                    [r["id"] for r in give_up], error.code, error.message, now()
                )
            if retry:
                await tx.runs.requeue([r["id"] for r in retry])
            # The lost worker may have been billed for its call: its worst case counts.
            await tx.budgets.charge([(r["id"], r["attempt"]) for r in rows])
            await tx.events.append(
                [
                    NewEvent(r["id"], r["batch_id"], RunStatus.FAILED, r["attempt"], error)
                    for r in give_up
                ]
                + [NewEvent(r["id"], r["batch_id"], RunStatus.QUEUED, r["attempt"]) for r in retry]
            )
            links = await self._evidence.link_finished_batches(tx, {r["batch_id"] for r in give_up})
            await tx.commit()
        await self._evidence.enqueue(links)
        if retry:
            await self._queue.release(EXECUTE_RUN, [r["id"] for r in retry])
        return len(rows)
