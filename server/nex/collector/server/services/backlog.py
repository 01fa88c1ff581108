"""The backlog an operator watches: runs queued and running, datasets building,
evidence links waiting for NEX. Read from PostgreSQL, the source of truth (Redis
only knows the jobs it still holds), and exported as Prometheus gauges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from nex.collector.server import metrics
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.runs import RunStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Backlog:
    runs_queued: int
    runs_running: int
    datasets_building: int
    evidence_pending: int
    # batch id -> USD left under its cap, for capped batches with active runs
    budgets_left: dict[str, float] = field(default_factory=dict)


async def read_backlog(uow: UnitOfWorkFactory) -> Backlog:
    async with uow() as tx:
        runs = await tx.runs.count_by_status((RunStatus.QUEUED, RunStatus.RUNNING))
        building = await tx.datasets.count_building()
        pending = await tx.evidence.count_pending()
        left = await tx.budgets.left_of_active_batches()
    return Backlog(runs[RunStatus.QUEUED], runs[RunStatus.RUNNING], building, pending, left)


def export(backlog: Backlog) -> None:
    metrics.RUNS_ACTIVE.labels(RunStatus.QUEUED.value).set(backlog.runs_queued)
    metrics.RUNS_ACTIVE.labels(RunStatus.RUNNING.value).set(backlog.runs_running)
    metrics.DATASETS_BUILDING.set(backlog.datasets_building)
    metrics.EVIDENCE_PENDING.set(backlog.evidence_pending)
    metrics.BUDGET_LEFT.clear()
    for batch_id, left in backlog.budgets_left.items():
        metrics.BUDGET_LEFT.labels(batch_id).set(left)


async def export_backlog_forever(
    uow: UnitOfWorkFactory, interval_s: float, stop: asyncio.Event
) -> None:
    """Refreshes the backlog gauges every ``interval_s`` until ``stop``. A failed
    read (the database is away) crashes the loop, which its supervisor logs and
    restarts; the gauges keep their last values meanwhile."""
    while not stop.is_set():
        export(await read_backlog(uow))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
