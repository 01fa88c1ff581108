"""The reconciler: PostgreSQL is the source of truth, Redis only a work list. It
re-enqueues queued runs whose job is gone (Redis restarted empty, an enqueue
failed) and takes back runs whose worker died (its heartbeat expired): it never
frees what a live worker holds, however slow that worker is."""

from __future__ import annotations

import logging
from datetime import timedelta

from nex.collector.server import metrics
from nex.collector.server.db.repositories.budgets import Settlement
from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.budgets import batch_scope
from nex.collector.server.domain.runs import RunError, RunStatus, workers_gave_up
from nex.collector.server.queue import BUILD_DATASET, DELIVER_EVIDENCE, EXECUTE_RUN, JobQueue
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.clock import now
from nex.collector.server.services.evidence import Evidence

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        evidence: Evidence,
        *,
        max_worker_losses: int,
        lease: timedelta,
        queued_grace: timedelta = timedelta(seconds=5),
        limit: int = 5000,
        budgets: Budgets | None = None,
    ) -> None:
        self._uow = uow
        self._budgets = budgets
        self._queue = queue
        self._evidence = evidence
        self._max_losses = max_worker_losses
        self._lease = lease
        self._grace = queued_grace
        self._limit = limit

    async def tick(self) -> tuple[int, int]:
        """One pass; returns (runs taken back from dead workers, re-enqueued)."""
        async with self._uow() as tx:
            live = await tx.workers.live(now())
            await tx.workers.prune(now() - timedelta(hours=1))
            await tx.commit()
        requeued = await self._orphaned(live)
        if self._budgets is not None and (resumed := await self._budgets.resume_new_day()):
            await self._queue.enqueue(EXECUTE_RUN, resumed)
        async with self._uow() as tx:
            stale = await tx.runs.stale_queued(now() - self._grace, self._limit)
            builds = await tx.datasets.stale_builds(now(), self._grace)
        enqueued = await self._queue.recover(
            EXECUTE_RUN, stale, grace_s=self._grace.total_seconds(), live_workers=live
        )
        if builds:
            await self._queue.release(BUILD_DATASET, builds)
        if links := await self._evidence.due():
            await self._queue.enqueue(DELIVER_EVIDENCE, links)
        metrics.RUNS_RECOVERED.labels("job_lost").inc(enqueued)
        if requeued or enqueued:
            log.info(
                "reconciler: %d runs taken back from dead workers, %d jobs re-enqueued",
                requeued,
                enqueued,
            )
        return requeued, enqueued

    async def _orphaned(self, live: set[str]) -> int:
        """Runs whose worker died: completed when their answer is stored, else
        queued again, or failed once workers died running them too often."""
        at = now()
        async with self._uow() as tx:
            rows = await tx.runs.orphaned(at, at - self._lease, self._limit)
            if not rows:
                return 0
            answered = [r for r in rows if r.answered]
            lost = [r for r in rows if not r.answered]
            give_up = [r for r in lost if r.lost_count + 1 >= self._max_losses]
            retry = [r for r in lost if r.lost_count + 1 < self._max_losses]
            await tx.runs.complete([r.id for r in answered], at)
            events = [NewEvent(r.id, r.batch_id, RunStatus.COMPLETED, r.attempt) for r in answered]
            for r in give_up:
                error = RunError(
                    "WORKER_LOST", workers_gave_up(r.lost_count + 1, r.teacher_failures)
                )
                await tx.runs.fail_many([r.id], error.code, error.message, at, lost=True)
                events.append(NewEvent(r.id, r.batch_id, RunStatus.FAILED, r.attempt, error))
            if retry:
                await tx.runs.requeue_lost([r.id for r in retry])
            # Answers stored: their real cost. The others: the lost worker may have
            # been billed for its call, so its worst case counts.
            await tx.budgets.settle(
                [Settlement(r.id, r.attempt, batch_scope(r.batch_id), r.cost_usd) for r in answered]
            )
            await tx.budgets.charge([(r.id, r.attempt) for r in lost])
            events += [NewEvent(r.id, r.batch_id, RunStatus.QUEUED, r.attempt) for r in retry]
            await tx.events.append(events)
            links = await self._evidence.link_finished_batches(
                tx, {r.batch_id for r in answered + give_up}
            )
            await tx.commit()
        await self._evidence.enqueue(links)
        if retry:
            await self._queue.release(EXECUTE_RUN, [r.id for r in retry], live_workers=live)
        metrics.RUNS_RECOVERED.labels("lease_expired").inc(len(retry))
        metrics.RUNS_RECOVERED.labels("answer_stored").inc(len(answered))
        return len(rows)
