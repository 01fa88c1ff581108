"""Provider batch jobs: runs of PROVIDER_BATCH / AUTO batches go to the
teacher's Batch API at its batch price, driven from PostgreSQL alone.

Every worker runs `tick` periodically. A tick:

1. **Deadlines** (AUTO batches): a job not finished by the deadline minus a
   margin is cancelled at the provider; runs still waiting go online.
2. **Groups** queued runs of each batch into new jobs within the teacher's
   limits (requests, bytes): the job row (state `preparing`, our own id) and
   its runs (running, attempt + 1, `custom_id` = run id + attempt) are
   committed *before* anything is sent.
3. **Steps** each due job, leased to this process (`next_poll_time`):
   `preparing` → upload the input (OpenAI) → `uploaded` → create the job →
   the provider's states, polled with backoff → results ingested → `ingested`.
   Before sending an upload or a create a second time (a process died after
   sending it but before recording the answer), the provider is asked for the
   file or job carrying our id: a job recorded but never confirmed is found,
   not submitted twice.

Results are streamed and stored in chunks through the executor's own path
(`RunExecutor.record`): text, tokens, logprobs, usage, cost at the batch
price, each run's events in the event log. A run ingested twice is stored once
(each result names its attempt). Errored, expired or cancelled requests are
tried again, the failure counted: online when the batch has a deadline, else
in the next provider job; FAILED with the provider's error once
TEACHER_MAX_ATTEMPTS are used up.

A step the provider refuses (an upload, a create, a poll) is tried again with
backoff, unless the error cannot pass by itself (a bad key, a missing
permission, an invalid request: the provider's non-retryable errors) or
`max_step_failures` steps have failed in a row. Then the job is *abandoned*
(cancelled at the provider if it was created there, as far as it lets us) and
its runs are settled with the provider's error like requests that errored
inside a job: FAILED at once for a non-retryable error, else tried again while
attempts last. Each change of a job's state or counts wakes the batch's
watchers, who get the job's progress (see services/watch.py).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import IO, Any

from nex.collector.server import metrics
from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.batches import Batch
from nex.collector.server.domain.budgets import BUDGET_EXHAUSTED
from nex.collector.server.domain.provider_jobs import ProviderJob
from nex.collector.server.domain.runs import RunError, RunRequest, RunStatus, teacher_gave_up
from nex.collector.server.domain.teacher import ChatMessage
from nex.collector.server.domain.teachers import OPENAI_BATCH, BatchSupport, TeacherDirectory
from nex.collector.server.domain.validation import storable_text
from nex.collector.server.ids import new_id
from nex.collector.server.providers.base import GenerationRequest, ProviderError
from nex.collector.server.providers.batch_jobs import (
    ENDED,
    BatchBackend,
    BatchResult,
    Content,
    JobStatus,
    custom_id,
    parse_custom_id,
)
from nex.collector.server.providers.pricing import cost_usd
from nex.collector.server.queue import EXECUTE_RUN, JobQueue
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.clock import now
from nex.collector.server.services.evidence import Evidence
from nex.collector.server.services.execution import Outcome, RunExecutor

log = logging.getLogger(__name__)

SPOOL_BYTES = 8 * 1024 * 1024

PREPARING = "preparing"
UPLOADED = "uploaded"
INGESTED = "ingested"
ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class ProviderJobSettings:
    poll_s: float = 30.0  # first poll after submitting; doubles per poll
    max_poll_s: float = 600.0
    # How long a process with no worker id holds a job's step (a worker holds
    # it while its heartbeat lasts).
    lease: timedelta = timedelta(minutes=10)
    deadline_margin: timedelta = timedelta(minutes=30)
    max_attempts: int = 4
    ingest_chunk: int = 500  # results stored per transaction
    # A batch's queued runs make a job once none has joined them for this long.
    settle: timedelta = timedelta(seconds=5)
    # A job whose steps failed this many times in a row is given up.
    max_step_failures: int = 8


class ProviderJobs:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        executor: RunExecutor,
        queue: JobQueue,
        teachers: TeacherDirectory,
        backend_for: Callable[[str], BatchBackend],
        *,
        settings: ProviderJobSettings | None = None,
        evidence: Evidence | None = None,
        budgets: Budgets | None = None,
        worker_id: str | None = None,
        crash_hook: Callable[[str], None] | None = None,
    ) -> None:
        self._uow = uow
        self._executor = executor
        self._queue = queue
        self._teachers = teachers
        self._backend_for = backend_for
        self._s = settings or ProviderJobSettings()
        self._evidence = evidence
        self._budgets = budgets or Budgets(uow)
        # This process's worker id (its heartbeat row): a job it steps is
        # nobody else's while it lives.
        self._worker_id = worker_id
        # Tests: called at "uploaded" and "created", after the provider accepted
        # the call and before it is recorded, and at "ingesting" after each
        # chunk of results stored (raise to play a crash there).
        self._crash_hook = crash_hook

    async def tick(self) -> int:
        """One pass; returns how many job steps ran."""
        await self._deadlines()
        await self._group()
        async with self._uow() as tx:
            due = await tx.provider_jobs.claim_due(now(), self._s.lease, 20, self._worker_id)
            await tx.commit()
        for job in due:
            try:
                await self._step(job)
            except ProviderError as err:
                # From the row: a part of this step that worked (a poll before
                # a failed download) has reset the count.
                async with self._uow() as tx:
                    current = await tx.provider_jobs.get(job.id) or job
                failures = current.step_failures + 1
                if not err.retryable or failures >= self._s.max_step_failures:
                    log.warning(
                        "provider job %s: %s (%s); giving it up after %d failed step(s)",
                        job.id,
                        err.message,
                        err.code,
                        failures,
                    )
                    await self._abandon(current, err, failures)
                    continue
                log.warning("provider job %s: %s (%s); retrying", job.id, err.message, err.code)
                async with self._uow() as tx:
                    await tx.provider_jobs.set(
                        job.id,
                        next_poll_time=now() + timedelta(seconds=self._backoff(job.polls)),
                        polls=job.polls + 1,
                        step_failures=failures,
                        error_code=err.code,
                        error_message=storable_text(err.message),
                    )
                    await tx.commit()
            finally:
                if self._worker_id is not None:
                    async with self._uow() as tx:
                        await tx.provider_jobs.release(job.id, self._worker_id)
                        await tx.commit()
        return len(due)

    def _backoff(self, polls: int) -> float:
        return float(min(self._s.poll_s * (2 ** min(polls, 20)), self._s.max_poll_s))

    def _hook(self, point: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(point)

    # -- deadlines ---------------------------------------------------------------

    async def _deadlines(self) -> None:
        at = now()
        async with self._uow() as tx:
            for job_id in await tx.provider_jobs.overdue(at, self._s.deadline_margin):
                log.info("provider job %s: deadline near, cancelling it", job_id)
                await tx.provider_jobs.set(job_id, cancel_requested=True, next_poll_time=at)
            online: list[str] = []
            for batch_id in await tx.provider_jobs.auto_batches_due(at, self._s.deadline_margin):
                online += await tx.provider_jobs.go_online(batch_id)
            await tx.commit()
        if online:
            await self._queue.enqueue(EXECUTE_RUN, online)

    # -- grouping ----------------------------------------------------------------

    async def _group(self) -> None:
        async with self._uow() as tx:
            waiting = await tx.provider_jobs.batches_waiting(
                100, now() - self._s.settle, OPENAI_BATCH.max_requests
            )
        for b in waiting:
            teacher = self._teachers.get(b.provider)
            if teacher is None or not teacher.batch.supported:
                continue
            backend = self._backend_for(teacher.name)
            while await self._new_job(b.id, teacher.batch, backend):
                pass

    async def _new_job(self, batch_id: str, limits: BatchSupport, backend: BatchBackend) -> bool:
        """One job of queued runs of the batch; whether one was made."""
        async with self._uow() as tx:
            batch = await tx.batches.get(batch_id)
            max_requests, max_bytes = limits.max_requests, limits.max_bytes
            rows = await tx.provider_jobs.take_queued(batch_id, max_requests)
            if batch is None or not rows:
                return False
            chosen: list[RunRequest] = []
            sizes: list[int] = []
            for r in rows:
                line = backend.request_line(
                    custom_id(r.id, r.attempt + 1), _request(batch, r.messages)
                )
                if chosen and sum(sizes) + len(line) > max_bytes:
                    break
                chosen.append(r)
                sizes.append(len(line))
            at = now()
            # Under a cost cap, as many as fit; the next job waits for a raise.
            fits = await self._reserve(tx, batch, chosen, limits.price_factor)
            more = len(fits) == len(chosen) and (
                len(chosen) == max_requests or len(chosen) < len(rows)
            )
            if not fits:
                await self._pause(tx, batch, chosen[0], at)
                await tx.commit()
                return False
            chosen, size = fits, sum(sizes[: len(fits)])
            job_id = new_id("pjb")
            await tx.provider_jobs.insert(
                {
                    "id": job_id,
                    "batch_id": batch_id,
                    "teacher": batch.provider,
                    "state": PREPARING,
                    "request_total": len(chosen),
                    "input_bytes": size,
                    "next_poll_time": at,
                    "create_time": at,
                    "update_time": at,
                }
            )
            await tx.provider_jobs.assign([r.id for r in chosen], job_id, at)
            await tx.events.append(
                [NewEvent(r.id, batch_id, RunStatus.RUNNING, r.attempt + 1) for r in chosen]
            )
            await tx.commit()
        log.info(
            "provider job %s: %d runs of batch %s (%d bytes)", job_id, len(chosen), batch_id, size
        )
        return more

    async def _reserve(
        self, tx: UnitOfWork, batch: Batch, rows: list[RunRequest], factor: float
    ) -> list[RunRequest]:
        """Reserves each request's worst case at the batch price under the
        batch's cap and its teacher's daily cap; the rows that fit, in order."""
        fits: list[RunRequest] = []
        for r in rows:
            holds = self._budgets.holds(batch, r.messages, factor)
            if not holds:
                return rows  # no cap applies
            savepoint = await tx.session.begin_nested()
            refused = await tx.budgets.reserve(r.id, r.attempt + 1, holds, batch_id=batch.id)
            if refused is not None:
                await savepoint.rollback()
                break
            await savepoint.commit()
            fits.append(r)
        return fits

    async def _pause(self, tx: UnitOfWork, batch: Batch, first: RunRequest, at: datetime) -> None:
        """The batch pauses (as an online one does); the run that did not fit
        tells watchers why with a QUEUED event whose error is BUDGET_EXHAUSTED."""
        message = (
            "the next provider batch request's worst case does not fit under the batch's "
            "max_cost_usd or its teacher's daily cap: raise max_cost_usd with UpdateBatch "
            "to resume"
        )
        if await tx.batches.pause(batch.id, BUDGET_EXHAUSTED, message, at):
            error = RunError(BUDGET_EXHAUSTED, message)
            await tx.events.append(
                [NewEvent(first.id, batch.id, RunStatus.QUEUED, first.attempt, error)]
            )
            metrics.BATCHES_PAUSED.labels(BUDGET_EXHAUSTED).inc()
            log.info("batch %s paused: %s", batch.id, message)

    # -- a job's steps -----------------------------------------------------------

    def _content(self, job: ProviderJob, backend: BatchBackend) -> Content:
        """Reads the job's input from PostgreSQL (the same lines each time):
        rows streamed by a server-side cursor into a file spooled to disk past
        SPOOL_BYTES, so a 200 MB job never sits in memory."""

        async def read() -> IO[bytes]:
            out = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
            try:
                async with self._uow() as tx:
                    batch = await tx.batches.get(job.batch_id)
                    assert batch is not None
                    async for r in tx.provider_jobs.requests(job.id):
                        cid = custom_id(r.id, r.attempt)
                        out.write(backend.request_line(cid, _request(batch, r.messages)))
            except BaseException:
                out.close()
                raise
            out.seek(0)
            return out

        return read

    async def _step(self, job: ProviderJob) -> None:
        backend = self._backend_for(job.teacher)
        state = job.state
        job_id = job.id
        content = self._content(job, backend)
        if state == PREPARING:
            # Tried before (polls > 0): the provider may hold it already.
            file_id = await backend.find_upload(job_id) if job.polls else None
            if file_id is None:
                await self._mark_attempt(job_id)
                file_id = await backend.upload(job_id, content)
            self._hook("uploaded")
            async with self._uow() as tx:
                await tx.provider_jobs.set_progress(
                    job_id,
                    job.batch_id,
                    state=UPLOADED,
                    input_file_id=file_id,
                    polls=0,
                    step_failures=0,
                )
                await tx.commit()
            job = replace(job, state=UPLOADED, input_file_id=file_id, polls=0)
            state = UPLOADED
        if state == UPLOADED:
            provider_id = None
            if job.polls:
                async with self._uow() as tx:
                    known = await tx.provider_jobs.known_ids(
                        job.teacher, job.create_time - timedelta(hours=1)
                    )
                provider_id = await backend.find_job(
                    job_id, job.create_time, job.request_total, known
                )
            if provider_id is None:
                await self._mark_attempt(job_id)
                provider_id = await backend.create(job_id, job.input_file_id, content)
            self._hook("created")
            async with self._uow() as tx:
                await tx.provider_jobs.set_progress(
                    job_id,
                    job.batch_id,
                    state="submitted",
                    provider_job_id=provider_id,
                    submit_time=now(),
                    polls=0,
                    step_failures=0,
                    next_poll_time=now() + timedelta(seconds=self._s.poll_s),
                )
                await tx.commit()
            if not backend.instant:
                return
            job = replace(job, state="submitted", provider_job_id=provider_id, polls=0)
            state = "submitted"
        provider_id = job.provider_job_id
        assert provider_id is not None  # set with state "submitted", kept since
        if job.cancel_requested and state not in ("cancelling", "canceling", "cancelled"):
            await backend.cancel(provider_id)
        status = await backend.retrieve(provider_id)
        total = status.total or job.request_total
        changed = (status.state, total, status.completed, status.failed) != (
            state,
            job.request_total,
            job.request_completed,
            job.request_failed,
        )
        values: dict[str, Any] = {
            "state": status.state,
            "request_total": total,
            "request_completed": status.completed,
            "request_failed": status.failed,
            "step_failures": 0,
            "polls": job.polls + 1,
            "next_poll_time": now() + timedelta(seconds=self._backoff(job.polls + 1)),
            "error_code": "PROVIDER_BATCH_FAILED" if status.error else None,
            "error_message": storable_text(status.error) if status.error else None,
        }
        async with self._uow() as tx:
            # Only a change wakes the batch's watchers (and moves update_time).
            if changed:
                await tx.provider_jobs.set_progress(job_id, job.batch_id, **values)
            else:
                await tx.provider_jobs.set(job_id, **values)
            await tx.commit()
        if status.ended:
            await self._ingest(job, provider_id, status, backend)

    async def _abandon(self, job: ProviderJob, err: ProviderError, failures: int) -> None:
        """The provider keeps refusing the job's steps: its runs are settled
        with the provider's error (tried again or failed, as for a request that
        errored inside a job), then the job is given up. Settled first: a
        process that dies in between finds the job again, its runs settled."""
        provider_id = job.provider_job_id
        if provider_id and job.state not in ENDED:
            try:  # as far as the provider lets us: it may refuse this too
                await self._backend_for(job.teacher).cancel(provider_id)
            except ProviderError as exc:
                log.info("provider job %s: cannot cancel %s (%s)", job.id, provider_id, exc)
        async with self._uow() as tx:
            batch = await tx.batches.get(job.batch_id)
        assert batch is not None
        status = JobStatus(state=ABANDONED, total=job.request_total, completed=0, failed=0)
        await self._settle_unanswered(job, batch, {}, status, refused=err)
        async with self._uow() as tx:
            await tx.provider_jobs.set_progress(
                job.id,
                job.batch_id,
                state=ABANDONED,
                step_failures=failures,
                error_code=err.code,
                error_message=storable_text(err.message),
                finish_time=now(),
                next_poll_time=None,
            )
            await tx.commit()

    async def _mark_attempt(self, job_id: str) -> None:
        """Recorded before a call that creates something at the provider: a
        later step looks there first."""
        async with self._uow() as tx:
            await tx.provider_jobs.set(job_id, polls=1)
            await tx.commit()

    # -- results -----------------------------------------------------------------

    async def _ingest(
        self, job: ProviderJob, provider_id: str, status: JobStatus, backend: BatchBackend
    ) -> None:
        """Stores the results of the ended job `provider_id` (the provider's id
        of `job`) and settles the runs that got none."""
        async with self._uow() as tx:
            batch = await tx.batches.get(job.batch_id)
        assert batch is not None
        teacher = self._teachers.get(batch.provider)
        factor = teacher.batch.price_factor if teacher is not None else 1.0
        errors: dict[str, BatchResult] = {}
        chunk: list[BatchResult] = []
        stored = 0

        content = self._content(job, backend)
        async for result in backend.results(provider_id, status, content):
            if result.completion is None:
                errors[result.custom_id] = result
                continue
            chunk.append(result)
            if len(chunk) >= self._s.ingest_chunk:
                stored += await self._store(batch, chunk, factor)
                chunk = []
                self._hook("ingesting")
        if chunk:
            stored += await self._store(batch, chunk, factor)
        await self._settle_unanswered(job, batch, errors, status)
        async with self._uow() as tx:
            cost = await tx.provider_jobs.completed_cost(job.id)
            counts = (
                {}
                if status.total
                else {"request_completed": stored, "request_failed": job.request_total - stored}
            )
            await tx.provider_jobs.set_progress(
                job.id,
                job.batch_id,
                **counts,
                state=INGESTED,
                cost_usd=cost,
                online_cost_usd=cost / factor if factor else cost,
                finish_time=now(),
                next_poll_time=None,
            )
            await tx.commit()
        log.info(
            "provider job %s (%s) %s: %d results stored, %d failed",
            job.id,
            provider_id,
            status.state,
            stored,
            len(errors),
        )

    async def _store(self, batch: Batch, results: Sequence[BatchResult], factor: float) -> int:
        outcomes = []
        received = time.perf_counter()
        for r in results:
            key = parse_custom_id(r.custom_id)
            if key is None or r.completion is None:
                continue
            c = r.completion
            outcomes.append(
                Outcome(
                    key[0],
                    batch.id,
                    key[1],
                    RunStatus.COMPLETED,
                    completion=c,
                    cost_usd=cost_usd(batch.provider, batch.model, c.input_tokens, c.output_tokens)
                    * factor,
                    received=received,
                    reserved=True,  # its reservation (if any) is settled with it
                )
            )
        done = await self._executor.record(outcomes)
        return sum(done)

    async def _settle_unanswered(
        self,
        job: ProviderJob,
        batch: Batch,
        errors: Mapping[str, BatchResult],
        status: JobStatus,
        *,
        refused: ProviderError | None = None,
    ) -> None:
        """The job's runs with no stored answer: tried again (the failure
        counted), failed with the provider's error, or cancelled. `refused`:
        the error that made us give the job up, for runs with no result."""
        at = now()
        online: list[str] = []
        async with self._uow() as tx:
            current = await tx.batches.get(batch.id)
            cancelled = current is not None and current.cancel_time is not None
            rows = await tx.provider_jobs.unanswered(job.id)
            events: list[NewEvent] = []
            requeue: list[str] = []
            for r in rows:
                result = errors.get(custom_id(r.id, r.attempt))
                if result is not None:
                    code, message = result.error_code, result.error_message
                    retryable = result.retryable
                elif refused is not None:
                    code, message = refused.code, storable_text(refused.message)
                    retryable = refused.retryable
                else:
                    code = "PROVIDER_BATCH_NO_RESULT"
                    message = (
                        status.error
                        or f"the provider batch job ended {status.state} with no result"
                    )
                    retryable = True
                failures = r.teacher_failures + 1
                if cancelled:
                    await tx.provider_jobs.fail([r.id], "", "", at, cancelled=True)
                    events.append(NewEvent(r.id, batch.id, RunStatus.CANCELLED, r.attempt))
                elif not retryable or failures >= self._s.max_attempts:
                    error = RunError(code, teacher_gave_up(message, failures, r.lost_count))
                    await tx.provider_jobs.fail(
                        [r.id], error.code, error.message, at, cancelled=False
                    )
                    events.append(NewEvent(r.id, batch.id, RunStatus.FAILED, r.attempt, error))
                else:
                    requeue.append(r.id)
                    events.append(
                        NewEvent(
                            r.id,
                            batch.id,
                            RunStatus.QUEUED,
                            r.attempt,
                            RunError(code, message),
                        )
                    )
            # Providers bill no failed request: whatever it reserved is freed.
            await tx.budgets.release([(r.id, r.attempt) for r in rows])
            # A batch with a deadline wants its results by then: online; else
            # the next provider job, at the batch price again.
            go_online = batch.deadline_time is not None
            await tx.provider_jobs.requeue(requeue, via_provider=not go_online)
            if go_online:
                online = requeue
            await tx.events.append(events)
            links: Sequence[str] = []
            if self._evidence is not None and self._evidence.enabled and rows:
                links = await self._evidence.link_finished_batches(tx, [batch.id])
            await tx.commit()
        if self._evidence is not None and links:
            await self._evidence.enqueue(links)
        if online:
            await self._queue.enqueue(EXECUTE_RUN, online)


def _request(batch: Batch, messages: list[ChatMessage]) -> GenerationRequest:
    return GenerationRequest(batch.model, messages, batch.params)
