"""Provider batch jobs and the runs they carry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, any_, func, literal, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY, insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.repositories.batches import provider_job_view
from nex.collector.server.db.repositories.events import NOTIFY_CHANNEL
from nex.collector.server.db.repositories.runs import ATTEMPT_COLUMNS, messages_from_json, move
from nex.collector.server.db.tables import batches, provider_jobs, runs, workers
from nex.collector.server.domain.batches import PROVIDER_JOB_FINAL_STATES, ProviderJobView
from nex.collector.server.domain.provider_jobs import ProviderJob, WaitingBatch
from nex.collector.server.domain.run_transitions import CANCEL_RUNNING, FAIL, RELEASE, SUBMIT
from nex.collector.server.domain.runs import RunAttempt, RunRequest, RunStatus

# States after which the job needs nothing more from us.
DONE = PROVIDER_JOB_FINAL_STATES
# What a job's steps read of it.
_JOB_COLUMNS = (
    provider_jobs.c.id,
    provider_jobs.c.batch_id,
    provider_jobs.c.teacher,
    provider_jobs.c.state,
    provider_jobs.c.provider_job_id,
    provider_jobs.c.input_file_id,
    provider_jobs.c.request_total,
    provider_jobs.c.request_completed,
    provider_jobs.c.request_failed,
    provider_jobs.c.polls,
    provider_jobs.c.step_failures,
    provider_jobs.c.cancel_requested,
    provider_jobs.c.create_time,
)
# What a run asks its teacher.
_REQUEST_COLUMNS = (runs.c.id, runs.c.attempt, runs.c.messages)


def _request(id_: str, attempt: int, messages: Sequence[Mapping[str, str]]) -> RunRequest:
    return RunRequest(id_, attempt, messages_from_json(messages))


def _run_among(ids: Sequence[str]) -> ColumnElement[bool]:
    """`runs.id = ANY($1)`: one array parameter however many runs a job holds
    (an IN list takes one per id, and asyncpg refuses more than 32,767, while
    an OpenAI job holds up to 50,000 requests)."""
    return runs.c.id == any_(literal(list(ids), ARRAY(Text)))


class ProviderJobRepository(Repository):
    """Jobs sent to a teacher's Batch API and the runs they carry."""

    table = provider_jobs

    async def batches_waiting(
        self, limit: int, settled_before: datetime, enough: int
    ) -> list[WaitingBatch]:
        """Batches (not paused, not cancelled) with runs queued for a provider
        job, once no run has joined them since `settled_before` (runs sent in
        many calls make one job, not one per call) or `enough` are waiting."""
        waiting = (
            select(runs.c.batch_id)
            .where(runs.c.via_provider.is_(True), runs.c.status == RunStatus.QUEUED.value)
            .group_by(runs.c.batch_id)
            .having((func.max(runs.c.create_time) < settled_before) | (func.count() >= enough))
            .limit(limit)
            .subquery()
        )
        stmt = select(batches.c.id, batches.c.provider).where(
            batches.c.id.in_(select(waiting.c.batch_id)),
            batches.c.pause_time.is_(None),
            batches.c.cancel_time.is_(None),
        )
        return [WaitingBatch(*row) for row in await self.session.execute(stmt)]

    async def take_queued(self, batch_id: str, limit: int) -> list[RunRequest]:
        """Queued runs of a batch waiting for a provider job, locked (others skip them)."""
        stmt = (
            select(*_REQUEST_COLUMNS)
            .where(
                runs.c.batch_id == batch_id,
                runs.c.via_provider.is_(True),
                runs.c.status == RunStatus.QUEUED.value,
            )
            .order_by(runs.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_request(*row) for row in await self.session.execute(stmt)]

    async def insert(self, values: Mapping[str, Any]) -> None:
        """Stores a new job from its column values."""
        await self.session.execute(insert(provider_jobs).values(**values))

    async def assign(self, run_ids: Sequence[str], job_id: str, now: datetime) -> None:
        """Queued -> running in job `job_id` (attempt + 1). No worker owns them
        and they hold no lease: the job does, in this table."""
        await self.session.execute(
            move(SUBMIT, _run_among(run_ids)).values(
                attempt=runs.c.attempt + 1,
                start_time=func.coalesce(runs.c.start_time, now),
                provider_job_id=job_id,
                worker_id=None,
                lease_expires=None,
            )
        )

    async def claim_due(
        self, now: datetime, lease: timedelta, limit: int, worker_id: str | None
    ) -> list[ProviderJob]:
        """Jobs due for their next step, taken by `worker_id`: nobody else takes
        one while that worker's heartbeat lasts, and a dead worker's is taken at
        once. A caller with no worker id holds it until `now + lease`."""
        owner_alive = (
            select(workers.c.id)
            .where(workers.c.id == provider_jobs.c.worker_id, workers.c.expires_at > now)
            .exists()
        )
        due = (
            select(provider_jobs.c.id)
            .where(
                provider_jobs.c.state.not_in(DONE),
                or_(
                    and_(
                        provider_jobs.c.worker_id.is_(None),
                        provider_jobs.c.next_poll_time <= now,
                    ),
                    and_(provider_jobs.c.worker_id.is_not(None), ~owner_alive),
                ),
            )
            .order_by(provider_jobs.c.next_poll_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(provider_jobs)
            .where(provider_jobs.c.id.in_(due))
            .values(next_poll_time=now + lease, worker_id=worker_id)
            .returning(*_JOB_COLUMNS)
        )
        return [ProviderJob(*row) for row in await self.session.execute(stmt)]

    async def release(self, job_id: str, worker_id: str | None) -> None:
        """The step is over: the job is due again at its own next_poll_time."""
        await self.session.execute(
            update(provider_jobs)
            .where(provider_jobs.c.id == job_id, provider_jobs.c.worker_id == worker_id)
            .values(worker_id=None)
        )

    async def set(self, job_id: str, **values: Any) -> None:
        """Sets the named columns of one job."""
        await self.session.execute(
            update(provider_jobs).where(provider_jobs.c.id == job_id).values(**values)
        )

    async def set_progress(self, job_id: str, batch_id: str, **values: Any) -> None:
        """`set`, for a change of the job's state or counts: stamps its
        update_time and wakes the batch's watchers (see WatchRuns)."""
        await self.set(job_id, update_time=func.now(), **values)
        await self.session.execute(select(func.pg_notify(NOTIFY_CHANNEL, batch_id)))

    async def of_batch(self, batch_id: str) -> list[ProviderJobView]:
        """A batch's jobs, oldest first."""
        stmt = (
            select(provider_jobs)
            .where(provider_jobs.c.batch_id == batch_id)
            .order_by(provider_jobs.c.create_time, provider_jobs.c.id)
        )
        return [provider_job_view(r) for r in (await self.session.execute(stmt)).mappings()]

    async def known_ids(self, teacher: str, since: datetime) -> frozenset[str]:
        """The provider ids our jobs at a teacher made since `since` hold."""
        stmt = select(provider_jobs.c.provider_job_id).where(
            provider_jobs.c.teacher == teacher,
            provider_jobs.c.provider_job_id.is_not(None),
            provider_jobs.c.create_time >= since,
        )
        return frozenset(r[0] for r in await self.session.execute(stmt))

    async def get(self, job_id: str) -> ProviderJob | None:
        """The job, or None."""
        # Typed Any: too many columns for select()'s typed overloads.
        stmt: Select[Any] = select(*_JOB_COLUMNS).where(provider_jobs.c.id == job_id)
        row = (await self.session.execute(stmt)).first()
        return None if row is None else ProviderJob(*row)

    async def requests(self, job_id: str) -> AsyncIterator[RunRequest]:
        """The runs a job carries, at the attempt it carries them, streamed
        (a server-side cursor: never all of them in memory)."""
        stmt = (
            select(*_REQUEST_COLUMNS)
            .where(
                runs.c.provider_job_id == job_id,
                runs.c.status == RunStatus.RUNNING.value,
            )
            .order_by(runs.c.id)
            .execution_options(yield_per=1000)
        )
        result = await self.session.stream(stmt)
        async for row in result:
            yield _request(*row)

    async def unanswered(self, job_id: str) -> list[RunAttempt]:
        """Runs still running in the job (locked): no result came for them."""
        stmt = (
            select(
                *ATTEMPT_COLUMNS,
            )
            .where(
                runs.c.provider_job_id == job_id,
                runs.c.status == RunStatus.RUNNING.value,
            )
            .with_for_update()
        )
        return [RunAttempt(*row) for row in await self.session.execute(stmt)]

    async def lock_running(self, keys: Sequence[tuple[str, int]]) -> list[RunAttempt]:
        """The runs still running at the given attempts, locked."""
        if not keys:
            return []
        wanted = dict(keys)
        stmt = (
            select(
                *ATTEMPT_COLUMNS,
            )
            .where(_run_among(list(wanted)), runs.c.status == RunStatus.RUNNING.value)
            .with_for_update()
        )
        found = [RunAttempt(*row) for row in await self.session.execute(stmt)]
        return [r for r in found if wanted.get(r.id) == r.attempt]

    async def requeue(self, ids: Sequence[str], *, via_provider: bool) -> None:
        """Running -> queued after a failed or expired request: one teacher
        failure more; through the next provider job, or online."""
        if not ids:
            return
        await self.session.execute(
            move(RELEASE, _run_among(ids)).values(
                teacher_failures=runs.c.teacher_failures + 1,
                via_provider=via_provider,
                provider_job_id=None,
                lease_expires=None,
                worker_id=None,
            )
        )

    async def fail(
        self, ids: Sequence[str], code: str, message: str, now: datetime, *, cancelled: bool
    ) -> None:
        """Ends the RUNNING runs among `ids` as FAILED with the error, or as
        CANCELLED (no error, no teacher failure counted) when `cancelled`."""
        if not ids:
            return
        await self.session.execute(
            move(CANCEL_RUNNING if cancelled else FAIL, _run_among(ids)).values(
                teacher_failures=runs.c.teacher_failures + (0 if cancelled else 1),
                error_code=None if cancelled else code,
                error_message=None if cancelled else message,
                end_time=now,
                lease_expires=None,
            )
        )

    async def go_online(self, batch_id: str) -> list[str]:
        """Queued runs of a batch that were waiting for a provider job go online."""
        stmt = (
            update(runs)
            .where(
                runs.c.batch_id == batch_id,
                runs.c.status == RunStatus.QUEUED.value,
                runs.c.via_provider.is_(True),
            )
            .values(via_provider=False)
            .returning(runs.c.id)
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def completed_cost(self, job_id: str) -> float:
        """What the job's completed runs cost, in USD."""
        stmt = select(func.coalesce(func.sum(runs.c.cost_usd), 0.0)).where(
            runs.c.provider_job_id == job_id, runs.c.status == RunStatus.COMPLETED.value
        )
        return float((await self.session.execute(stmt)).scalar() or 0.0)

    async def request_cancel(self, batch_id: str, now: datetime) -> None:
        """Asks every unfinished job of the batch to cancel, polled at once."""
        await self.session.execute(
            update(provider_jobs)
            .where(provider_jobs.c.batch_id == batch_id, provider_jobs.c.state.not_in(DONE))
            .values(cancel_requested=True, next_poll_time=now)
        )

    async def overdue(self, now: datetime, margin: timedelta) -> list[str]:
        """The ids of jobs of AUTO batches whose deadline (minus the margin) has come."""
        stmt = (
            select(provider_jobs.c.id)
            .join(batches, batches.c.id == provider_jobs.c.batch_id)
            .where(
                batches.c.execution_mode == "auto",
                batches.c.deadline_time.is_not(None),
                batches.c.deadline_time - margin <= now,
                provider_jobs.c.state.not_in(DONE),
                provider_jobs.c.cancel_requested.is_(False),
            )
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def auto_batches_due(self, now: datetime, margin: timedelta) -> list[str]:
        """AUTO batches past their deadline minus the margin that still have
        runs waiting for a provider job."""
        stmt = (
            select(batches.c.id)
            .where(
                batches.c.execution_mode == "auto",
                batches.c.deadline_time.is_not(None),
                batches.c.deadline_time - margin <= now,
                batches.c.cancel_time.is_(None),
                select(runs.c.id)
                .where(
                    runs.c.batch_id == batches.c.id,
                    runs.c.via_provider.is_(True),
                    runs.c.status == RunStatus.QUEUED.value,
                )
                .exists(),
            )
            .limit(100)
        )
        return [r[0] for r in await self.session.execute(stmt)]
