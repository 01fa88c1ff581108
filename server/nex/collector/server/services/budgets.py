"""Hard budget caps: setting them, reserving before each teacher call, pausing a
batch whose next call does not fit, and resuming it when the cap is raised.

Reservations are rows per (run, attempt, scope) next to the money of the scope.
A run's result settles its reservation in the transaction that stores the
result; a failed call releases it; a reservation whose worker was lost (lease
expired, job cancelled mid-call) is charged at its worst case by whoever hands
the run back, since the provider may have billed the call. So nothing is
leaked, and the sum of real costs stays under every cap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time

from nex.collector.server import metrics
from nex.collector.server.db.repositories.budgets import Hold
from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.batches import Batch, BatchView
from nex.collector.server.domain.budgets import (
    BUDGET_EXHAUSTED,
    MAX_COST_USD,
    TEACHER_SCOPE_PREFIX,
    CostEstimate,
    batch_scope,
    teacher_day_scope,
)
from nex.collector.server.domain.errors import FailedPrecondition, InvalidArgument
from nex.collector.server.domain.estimates import output_token_bound, prompt_token_bound
from nex.collector.server.domain.runs import RunError, RunStatus
from nex.collector.server.domain.teacher import ChatMessage, GenerationParams
from nex.collector.server.providers import pricing
from nex.collector.server.services.clock import now

log = logging.getLogger(__name__)

DailyCap = Callable[[str], float | None]
"""A teacher's daily cap in USD (None: none), e.g. from the teachers file."""


def no_daily_caps(teacher: str) -> float | None:
    return None


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one call holds; `refused` names the scope that could not take it."""

    run_id: str
    attempt: int
    holds: tuple[Hold, ...] = ()
    refused: str | None = None

    @property
    def held(self) -> bool:
        return bool(self.holds) and self.refused is None


class Budgets:
    def __init__(self, uow: UnitOfWorkFactory, *, daily_cap: DailyCap = no_daily_caps) -> None:
        self._uow = uow
        # Per-teacher daily caps (the teachers file's `daily_max_cost_usd`),
        # read before each call.
        self.daily_cap = daily_cap

    # -- setting caps --------------------------------------------------------------

    @staticmethod
    def check_cappable(
        provider: str, model: str, params: GenerationParams, *, on_create: bool
    ) -> None:
        """A cap needs a true bound on each call's cost: max_tokens, and a price."""
        if params.max_tokens is None:
            what = "a cost cap needs params.max_tokens: without it no call has a worst case"
            if on_create:
                raise InvalidArgument.one("params.max_tokens", f"is required: {what}")
            raise FailedPrecondition(
                f"this batch has no params.max_tokens; {what}",
                reason="MAX_TOKENS_REQUIRED",
                metadata={"field": "params.max_tokens"},
            )
        if pricing.price_for(provider, model) is None:
            raise FailedPrecondition(
                f"model {model!r} of teacher {provider!r} has no known price, so a cap "
                "cannot be enforced; give it a price in the teachers file",
                reason="MODEL_NOT_PRICED",
                metadata={"provider": provider, "model": model},
            )

    async def set_cap(self, batch: Batch, cap: float | None) -> list[str]:
        """Sets the batch's cap; when that lifts a budget pause, returns the
        queued runs to enqueue again."""
        if cap is not None:
            self.check_cappable(batch.provider, batch.model, batch.params, on_create=False)
        async with self._uow() as tx:
            before = await tx.budgets.set_cap(batch_scope(batch.id), cap)
            raised = cap is None or (before.max_cost_usd is not None and cap > before.max_cost_usd)
            resume = (
                raised
                and batch.pause is not None
                and batch.pause.reason == BUDGET_EXHAUSTED
                and await tx.batches.resume(batch.id)
            )
            queued = await tx.runs.queued_ids(batch.id) if resume else []
            await tx.commit()
        if resume:
            log.info("batch %s resumed: cap raised to %s", batch.id, cap)
        return queued

    # -- estimates -----------------------------------------------------------------

    @staticmethod
    def estimate(
        provider: str, model: str, params: GenerationParams, prompts: Sequence[list[ChatMessage]]
    ) -> CostEstimate:
        prompt_bound = sum(prompt_token_bound(m) for m in prompts)
        output_bound = output_token_bound(params.max_tokens) * len(prompts)
        return CostEstimate(
            runs=len(prompts),
            prompt_tokens_bound=prompt_bound,
            output_tokens_bound=output_bound,
            worst_case_cost_usd=pricing.cost_usd(provider, model, prompt_bound, output_bound),
            priced=pricing.price_for(provider, model) is not None,
        )

    @staticmethod
    def with_estimate(view: BatchView) -> BatchView:
        """The view with the worst-case cost of its queued runs."""
        b = view.batch
        worst = pricing.cost_usd(
            b.provider,
            b.model,
            view.queued_prompt_tokens_bound,
            output_token_bound(b.params.max_tokens) * view.counts.queued,
        )
        return replace(view, queued_worst_case_usd=worst)

    # -- around each teacher call --------------------------------------------------

    def _holds(
        self, batch: Batch, messages: Sequence[ChatMessage], price_factor: float = 1.0
    ) -> tuple[Hold, ...]:
        daily = self.daily_cap(batch.provider)
        if batch.max_cost_usd is None and daily is None:
            return ()
        worst = price_factor * pricing.cost_usd(
            batch.provider,
            batch.model,
            prompt_token_bound(messages),
            output_token_bound(batch.params.max_tokens),
        )
        holds = [Hold(batch_scope(batch.id), worst)]
        if daily is not None:
            day = datetime.now(UTC).date()
            holds.append(Hold(teacher_day_scope(batch.provider, day), worst, cap=daily))
        return tuple(holds)

    def holds(
        self, batch: Batch, messages: Sequence[ChatMessage], price_factor: float
    ) -> tuple[Hold, ...]:
        """What one request of a provider batch job reserves: its worst case at
        the batch price, in every scope it counts against (none without caps)."""
        return self._holds(batch, messages, price_factor)

    async def reserve(
        self, batch: Batch, run_id: str, attempt: int, messages: Sequence[ChatMessage]
    ) -> Reservation:
        """Reserves the call's worst case in every scope it counts against (none
        when no cap applies: then nothing is written)."""
        holds = self._holds(batch, messages)
        if not holds:
            return Reservation(run_id, attempt)
        async with self._uow() as tx:
            refused = await tx.budgets.reserve(run_id, attempt, holds, batch_id=batch.id)
            if refused is None:
                await tx.commit()
            else:
                await tx.rollback()
        return Reservation(run_id, attempt, holds, refused)

    async def release(self, r: Reservation) -> None:
        """The call failed; providers do not bill errors."""
        if r.held:
            async with self._uow() as tx:
                await tx.budgets.release([(r.run_id, r.attempt)])
                await tx.commit()

    async def charge(self, r: Reservation) -> None:
        """The call ended with no answer after its request may have reached the
        provider, which may bill it: its worst case counts as spent."""
        if r.held:
            async with self._uow() as tx:
                await tx.budgets.charge([(r.run_id, r.attempt)])
                await tx.commit()

    async def pause(self, batch: Batch, r: Reservation) -> None:
        """The call does not fit: the batch pauses and the run goes back to the
        queue with its attempt given back."""
        scope = r.refused or batch_scope(batch.id)
        worst = max((h.amount_usd for h in r.holds), default=0.0)
        if scope == batch_scope(batch.id):
            message = (
                f"the next run's worst case (${worst:.6f}) does not fit under the batch's "
                "max_cost_usd: raise it with UpdateBatch to resume"
            )
        else:
            message = (
                f"the next run's worst case (${worst:.6f}) does not fit under the daily cap "
                f"{scope}: the batch resumes on the next UTC day"
            )
        error = RunError(BUDGET_EXHAUSTED, message)
        async with self._uow() as tx:
            paused = await tx.batches.pause(batch.id, BUDGET_EXHAUSTED, message, now(), scope=scope)
            if await tx.runs.unclaim(r.run_id, r.attempt):
                await tx.events.append(
                    [NewEvent(r.run_id, batch.id, RunStatus.QUEUED, r.attempt - 1, error)]
                )
            await tx.commit()
        if paused:
            metrics.BATCHES_PAUSED.labels(BUDGET_EXHAUSTED).inc()
            log.info("batch %s paused: %s", batch.id, message)

    async def resume_new_day(self) -> list[str]:
        """Resumes the batches a daily cap paused on an earlier UTC day; returns
        their queued runs, to enqueue again."""
        midnight = datetime.combine(datetime.now(UTC).date(), time.min, UTC)
        async with self._uow() as tx:
            resumed = await tx.batches.resume_paused_in_scopes_before(
                TEACHER_SCOPE_PREFIX, midnight
            )
            queued = [r for b in resumed for r in await tx.runs.queued_ids(b)]
            await tx.commit()
        if resumed:
            log.info("a new UTC day resumed %d batches paused by a daily cap", len(resumed))
        return queued


__all__ = ["MAX_COST_USD", "Budgets", "DailyCap", "Reservation", "no_daily_caps"]
