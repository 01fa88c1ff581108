"""Executing one run: claim it, call the teacher with retries, store the result.
Every state change is a guarded transition, so a duplicate or late job does
nothing; claims and results of concurrent runs share transactions.

A teacher's answer is stored in two steps. First the answer alone, at once, on
connections of its own and without the run-events lock that orders every
status change: a paid answer is durable within milliseconds, however busy the
event log is. Then the run becomes completed with its event, in revision order.
A run whose answer is stored is never asked for again: if its worker dies in
between, the reconciler completes it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from nex.collector.server import metrics
from nex.collector.server.db.repositories.budgets import Settlement
from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.batches import Batch
from nex.collector.server.domain.budgets import batch_scope
from nex.collector.server.domain.runs import (
    Answer,
    ClaimedRun,
    RunAnswer,
    RunEnding,
    RunError,
    RunStatus,
    teacher_gave_up,
)
from nex.collector.server.providers.base import (
    Completion,
    GenerationRequest,
    ProviderError,
    TeacherProvider,
)
from nex.collector.server.providers.errors import RATE_LIMITED
from nex.collector.server.providers.pricing import cost_usd
from nex.collector.server.providers.retry import RetryPolicy
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.clock import now
from nex.collector.server.services.evidence import Evidence
from nex.collector.server.services.microbatch import MicroBatcher
from nex.collector.server.services.side_loop import SideLoop
from nex.collector.server.services.throttle import CallGate, Throttled

log = logging.getLogger(__name__)

T = TypeVar("T")


class AnswerSink(Protocol):
    async def store(self, answers: Sequence[RunAnswer]) -> None:
        """Stores the answers of runs still running at their attempt, durably,
        in one round trip."""


@dataclass(frozen=True, slots=True)
class Outcome:
    run_id: str
    batch_id: str
    attempt: int
    status: RunStatus
    completion: Completion | None = None
    error: RunError | None = None
    cost_usd: float = 0.0
    latency_ms: int = 0
    reserved: bool = False  # holds a budget reservation, settled with the result
    received: float = 0.0  # time.perf_counter() when the answer arrived


class RunExecutor:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        provider_for: Callable[[str], TeacherProvider],
        *,
        policy: RetryPolicy,
        lease: timedelta,
        budgets: Budgets | None = None,
        evidence: Evidence | None = None,
        batch_ttl_s: float = 2.0,
        worker_id: str | None = None,
        answers: AnswerSink,
        answers_loop: SideLoop | None = None,
        gate: CallGate | None = None,
    ) -> None:
        self._uow = uow
        self._gate = gate
        # Answers are stored through `answers`, on `answers_loop` when given
        # (then `answers` must be used there only).
        self._answer_sink = answers
        self._answers_loop = answers_loop
        self._worker_id = worker_id
        self._provider_for = provider_for
        self._policy = policy
        self._lease = lease
        self._evidence = evidence
        self._budgets = budgets or Budgets(uow)
        # batch id -> (batch, when read): re-read every `batch_ttl_s` so that a
        # cap set or changed by UpdateBatch applies within seconds.
        self._batches: dict[str, tuple[Batch, float]] = {}
        self._batch_ttl_s = batch_ttl_s
        self._claims: MicroBatcher[str, ClaimedRun | None] = MicroBatcher(
            self._claim_many, name="claims"
        )
        # No linger: an answer is written as soon as a connection is free; answers
        # arriving while all are busy share the next transaction.
        self._answers: MicroBatcher[Outcome, bool] = MicroBatcher(
            self._store_answers, name="answers", max_size=64, linger_s=0.0, concurrency=4
        )
        self._outcomes: MicroBatcher[Outcome, bool] = MicroBatcher(
            self._finish_many, name="results"
        )
        self._handbacks: MicroBatcher[tuple[str, str, int, RunError], bool] = MicroBatcher(
            self._hand_back_many, name="handbacks"
        )
        # Runs this process has claimed and not finished: run id -> (batch id,
        # attempt). A job cancelled at any point (even while its claim was being
        # committed) leaves its run here, and the run is handed back.
        self._held: dict[str, tuple[str, int]] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        """Once the jobs have ended: hands back every run still held, so the next
        worker takes them at once instead of when their lease runs out."""
        await self._claims.aclose()
        await self._on_answers_loop(self._answers.aclose())
        await self._outcomes.aclose()
        await self._handbacks.aclose()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._held:
            await self._release(dict(self._held))

    async def execute(self, run_id: str) -> str:
        """Runs one job; returns what happened (for logs and arq's job result)."""
        claim = await self._claims.submit(run_id)
        if claim is None:
            return "skipped: not queued"
        try:
            batch = await self._batch(claim.batch_id)
            provider = self._provider_for(batch.provider)
            request = GenerationRequest(batch.model, claim.messages, batch.params)
            result = await self._attempts(claim, run_id, batch, provider, request)
        except Throttled as throttled:
            if not await self._hand_back_throttled(run_id, throttled):
                return "stopped: cancelled or lease lost"
            raise
        except asyncio.CancelledError:
            # Stopping, or arq's job timeout: hand the run back now rather than
            # when its lease runs out.
            held = self._held.get(run_id)
            if held is not None:
                task = asyncio.create_task(self._release({run_id: held}))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)
            raise
        self._held.pop(run_id, None)
        return result

    async def _attempts(
        self,
        claim: ClaimedRun,
        run_id: str,
        batch: Batch,
        provider: TeacherProvider,
        request: GenerationRequest,
    ) -> str:
        attempt = claim.attempt
        # Teacher calls that failed, this run's whole life long: a worker that died
        # while calling does not count (see the reconciler).
        failures = claim.teacher_failures
        while True:
            # Capacity first (a run waiting for it holds no budget), then the
            # budget: the call's worst case is reserved; the result settles it.
            ticket = await self._gate.enter(batch.provider, run_id, request) if self._gate else None
            hold = await self._budgets.reserve(batch, run_id, attempt, request.messages)
            if hold.refused:
                if self._gate is not None:
                    await self._gate.leave(ticket)
                await self._budgets.pause(batch, hold)
                self._held.pop(run_id, None)
                return "paused: budget exhausted"
            started = time.perf_counter()
            try:
                completion = await provider.generate(request)
            except ProviderError as err:
                if err.maybe_billed:  # no answer, but perhaps a bill: its worst case
                    await self._budgets.charge(hold)
                else:  # providers do not bill errors
                    await self._budgets.release(hold)
                _observe_call(batch.provider, err.code, started)
                if self._gate is not None:
                    await self._gate.leave(ticket, error=err)
                if ticket is not None and err.code == RATE_LIMITED:
                    continue  # not an attempt: the limiter now holds every worker off
                failures += 1
                if not self._policy.should_retry(failures, err):
                    message = teacher_gave_up(err.message, failures, claim.lost_count)
                    outcome = Outcome(
                        run_id,
                        batch.id,
                        attempt,
                        RunStatus.FAILED,
                        error=RunError(err.code, message),
                    )
                    if await self._outcomes.submit(outcome):
                        metrics.RUNS_FINISHED.labels(RunStatus.FAILED.value).inc()
                    return f"failed: {err.code}"
                await asyncio.sleep(self._policy.delay(failures, err))
                if not await self._next_attempt(run_id, batch.id, attempt):
                    return "stopped: cancelled or lease lost"
                attempt += 1
                continue
            received = time.perf_counter()
            latency_ms = int((received - started) * 1000)
            _observe_call(batch.provider, "ok", started)
            outcome = Outcome(
                run_id,
                batch.id,
                attempt,
                RunStatus.COMPLETED,
                completion=completion,
                cost_usd=cost_usd(
                    batch.provider, batch.model, completion.input_tokens, completion.output_tokens
                ),
                latency_ms=latency_ms,
                reserved=hold.held,
                received=received,
            )
            # Step one: the answer alone, durable at once (before anything else
            # is awaited here); step two: completed, with its event, in revision
            # order (see the module docstring).
            stored = self._start_on_answers_loop(self._answers.submit(outcome))
            if self._gate is not None:
                await self._gate.leave(ticket, completion=completion)
            await stored
            if not await self._outcomes.submit(outcome):
                return "discarded: run moved on, or completed by the reconciler"
            _observe_completion(batch.provider, outcome)
            return "completed"

    async def record(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Stores results obtained outside a call of this executor (a provider
        batch job's) exactly as a call's: the answers first, then each run
        completed or failed with its event. Each outcome's run must be running
        at its attempt; one that moved on is skipped (False), so a result
        ingested twice is stored once."""
        answered = [o for o in outcomes if o.status is RunStatus.COMPLETED]
        if answered:
            await self._on_answers_loop(self._store_answers(answered))
        done = await self._finish_many(outcomes)
        for o, ok in zip(outcomes, done, strict=True):
            if ok and o.status is RunStatus.COMPLETED:
                _observe_completion(self._provider_of(o.batch_id), o)
            elif ok:
                metrics.RUNS_FINISHED.labels(o.status.value).inc()
        return done

    def _provider_of(self, batch_id: str) -> str:
        cached = self._batches.get(batch_id)
        return cached[0].provider if cached is not None else "unknown"

    async def _batch(self, batch_id: str) -> Batch:
        cached = self._batches.get(batch_id)
        if cached is not None and time.monotonic() - cached[1] < self._batch_ttl_s:
            return cached[0]
        async with self._uow() as tx:
            batch = await tx.batches.get(batch_id)
        if batch is None:
            raise LookupError(f"batch {batch_id} vanished")
        if len(self._batches) > 1000:
            self._batches.clear()
        self._batches[batch_id] = (batch, time.monotonic())
        return batch

    async def _claim_many(self, run_ids: Sequence[str]) -> list[ClaimedRun | None]:
        async with self._uow() as tx:
            claimed = await tx.runs.claim(
                list(dict.fromkeys(run_ids)), self._lease, now(), self._worker_id
            )
            await tx.events.append(
                [NewEvent(c.id, c.batch_id, RunStatus.RUNNING, c.attempt) for c in claimed]
            )
            await tx.commit()
        claims = {c.id: c for c in claimed}
        self._held.update({c.id: (c.batch_id, c.attempt) for c in claimed})
        return [claims.pop(run_id, None) for run_id in run_ids]

    async def _on_answers_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._start_on_answers_loop(coro)

    def _start_on_answers_loop(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        """Starts `coro` at once: on the answers loop, or as a task of this one."""
        if self._answers_loop is None:
            return asyncio.ensure_future(coro)
        return self._answers_loop.start(coro)

    async def _store_answers(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Step one of a completion: the answer, durable, the run still running."""
        answered_at = now()
        # Guarded by the statement itself (running, same attempt): no lock round
        # trip. A run that moved on keeps nothing, and its completion finds it gone.
        await self._answer_sink.store(
            [RunAnswer(o.run_id, o.attempt, _answer(o), answered_at) for o in outcomes]
        )
        committed = time.perf_counter()
        for o in outcomes:
            metrics.ANSWER_COMMIT_SECONDS.observe(committed - o.received)
        return [True] * len(outcomes)

    async def _finish_many(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Completed (answer already stored) or failed, with their events."""
        finished_at = now()
        links: Sequence[str] = ()
        async with self._uow() as tx:
            live = await tx.runs.lock_running([(o.run_id, o.attempt) for o in outcomes])
            done = [o for o in outcomes if o.run_id in live]
            await tx.runs.complete(
                [o.run_id for o in done if o.status is RunStatus.COMPLETED], finished_at
            )
            await tx.runs.finish(
                [
                    RunEnding(o.run_id, o.status, finished_at, o.error)
                    for o in done
                    if o.status is not RunStatus.COMPLETED
                ]
            )
            await tx.budgets.settle(
                [
                    Settlement(o.run_id, o.attempt, batch_scope(o.batch_id), o.cost_usd)
                    for o in outcomes
                    if o.run_id in live
                ],
                reserved=any(o.reserved for o in outcomes),
            )
            await tx.events.append(
                [
                    NewEvent(o.run_id, o.batch_id, o.status, o.attempt, o.error)
                    for o in outcomes
                    if o.run_id in live
                ]
            )
            links = await self._link_finished(tx, {o.batch_id for o in outcomes})
            await tx.commit()
        if self._evidence is not None:
            await self._evidence.enqueue(links)
        return [o.run_id in live for o in outcomes]

    async def _link_finished(self, tx: UnitOfWork, batch_ids: Iterable[str]) -> Sequence[str]:
        """Links, in `tx`, the batches created with link_evidence that `tx` ends."""
        if self._evidence is None or not self._evidence.enabled:
            return []
        linked = [
            b
            for b in batch_ids
            if (cached := self._batches.get(b)) is None or cached[0].link_evidence
        ]
        return await self._evidence.link_finished_batches(tx, linked) if linked else []

    async def _release(self, held: Mapping[str, tuple[str, int]]) -> None:
        """Running -> queued for the given runs still at the attempt held; those
        whose answer is already stored -> completed."""
        keys = [(r, attempt) for r, (_, attempt) in held.items()]
        try:
            async with self._uow() as tx:
                released = await tx.runs.release(keys)
                answered = await tx.runs.complete_answered(keys, now())
                # Answers stored: their real cost. A call cut off mid-way may have
                # been billed: its worst case counts.
                await tx.budgets.settle(
                    [
                        Settlement(r.id, r.attempt, batch_scope(r.batch_id), r.cost_usd)
                        for r in answered
                    ]
                )
                done = {r.id for r in answered}
                await tx.budgets.charge([k for k in keys if k[0] not in done])
                await tx.events.append(
                    [NewEvent(r, held[r][0], RunStatus.QUEUED, held[r][1]) for r in released]
                    + [
                        NewEvent(r.id, r.batch_id, RunStatus.COMPLETED, held[r.id][1])
                        for r in answered
                    ]
                )
                links = await self._link_finished(tx, {r.batch_id for r in answered})
                await tx.commit()
        except Exception as exc:  # the reconciler takes them back once we are gone
            log.warning("could not hand back %d runs: %s", len(held), exc)
            return
        if self._evidence is not None:
            await self._evidence.enqueue(links)
        for run_id in held:
            self._held.pop(run_id, None)
        if released:
            log.info("handed back %d runs", len(released))

    async def _hand_back_throttled(self, run_id: str, throttled: Throttled) -> bool:
        """Running -> queued for a run whose call never started, its attempt
        given back; the event tells watchers why (error code THROTTLED)."""
        held = self._held.pop(run_id, None)
        if held is None:
            return False
        reason = RunError(
            "THROTTLED",
            f"waiting for teacher {throttled.teacher!r} capacity ({throttled.reason}); "
            f"next try in {throttled.delay_s:.1f}s",
        )
        if not await self._handbacks.submit((run_id, held[0], held[1], reason)):
            return False
        metrics.RUNS_THROTTLED.labels(throttled.teacher).inc()
        return True

    async def _hand_back_many(self, items: Sequence[tuple[str, str, int, RunError]]) -> list[bool]:
        async with self._uow() as tx:
            released = set(
                await tx.runs.release([(r, a) for r, _, a, _ in items], give_back_attempt=True)
            )
            await tx.events.append(
                [
                    NewEvent(r, b, RunStatus.QUEUED, a - 1, e)
                    for r, b, a, e in items
                    if r in released
                ]
            )
            await tx.commit()
        return [r in released for r, _, _, _ in items]

    async def _next_attempt(self, run_id: str, batch_id: str, attempt: int) -> bool:
        """Before a retry: stop when the batch was cancelled, else attempt + 1."""
        async with self._uow() as tx:
            batch = await tx.batches.get(batch_id)
            if batch is not None and batch.cancel_time is not None:
                links: Sequence[str] = ()
                if await tx.runs.cancel_running(run_id, attempt, now()):
                    await tx.events.append(
                        [NewEvent(run_id, batch_id, RunStatus.CANCELLED, attempt)]
                    )
                    links = await self._link_finished(tx, [batch_id])
                await tx.commit()
                if self._evidence is not None:
                    await self._evidence.enqueue(links)
                return False
            if not await tx.runs.next_attempt(run_id, attempt, self._lease, now()):
                return False
            await tx.events.append([NewEvent(run_id, batch_id, RunStatus.RUNNING, attempt + 1)])
            await tx.commit()
            self._held[run_id] = (batch_id, attempt + 1)
            return True


def _observe_call(provider: str, outcome: str, started: float) -> float:
    """Counts one teacher call; returns how long it took, in seconds."""
    elapsed = time.perf_counter() - started
    metrics.TEACHER_CALLS.labels(provider, outcome).inc()
    metrics.TEACHER_SECONDS.labels(provider).observe(elapsed)
    return elapsed


def _observe_completion(provider: str, o: Outcome) -> None:
    metrics.RUNS_FINISHED.labels(RunStatus.COMPLETED.value).inc()
    if o.completion is not None:
        metrics.TEACHER_TOKENS.labels(provider, "input").inc(o.completion.input_tokens)
        metrics.TEACHER_TOKENS.labels(provider, "output").inc(o.completion.output_tokens)
    if o.cost_usd:
        metrics.TEACHER_COST.labels(provider).inc(o.cost_usd)


def _answer(o: Outcome) -> Answer:
    c = o.completion
    assert c is not None
    return Answer(
        c.text,
        c.finish_reason,
        c.tokens,
        c.input_tokens,
        c.output_tokens,
        o.cost_usd,
        o.latency_ms,
    )
