"""The gate around each teacher call: take capacity from the shared limiter
before, settle it after. A short wait is slept here (the run stays running);
a longer one raises `Throttled`, and the executor hands the run back to the
queue without using an attempt."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from nex.collector.server import metrics
from nex.collector.server.domain.estimates import output_token_bound, prompt_token_bound
from nex.collector.server.domain.ratelimits import RateSnapshot, parse_rate_headers
from nex.collector.server.domain.teachers import TeacherDirectory
from nex.collector.server.limiter import BucketLimits, RateLimiter
from nex.collector.server.providers.base import Completion, GenerationRequest, ProviderError
from nex.collector.server.providers.errors import RATE_LIMITED

# Longest wait a run sleeps through while it is held as running.
HOLD_S = 2.0


class Throttled(Exception):
    """No capacity soon enough: come back in `delay_s` seconds."""

    def __init__(self, teacher: str, delay_s: float, reason: str) -> None:
        super().__init__(f"waiting for {teacher} capacity ({reason})")
        self.teacher = teacher
        self.delay_s = delay_s
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Ticket:
    teacher: str
    model: str
    run_id: str
    reserved_tokens: int
    limits: BucketLimits


class CallGate:
    def __init__(
        self, limiter: RateLimiter | None, teachers: TeacherDirectory, *, hold_s: float = HOLD_S
    ) -> None:
        self._limiter = limiter
        self._teachers = teachers
        self._hold_s = hold_s

    async def enter(
        self, teacher_name: str, run_id: str, request: GenerationRequest
    ) -> Ticket | None:
        """Waits for capacity (None: this teacher is not limited)."""
        teacher = self._teachers.get(teacher_name)
        if self._limiter is None or teacher is None or not teacher.limited:
            return None
        lim = teacher.limits
        ticket = Ticket(
            teacher_name,
            request.model,
            run_id,
            prompt_token_bound(request.messages) + output_token_bound(request.params.max_tokens),
            BucketLimits(
                lim.requests_per_min or 0, lim.tokens_per_min or 0, lim.max_in_flight or 0
            ),
        )
        started = time.perf_counter()
        waited = 0.0
        while True:
            grant = await self._limiter.acquire(
                teacher_name, request.model, run_id, ticket.reserved_tokens, ticket.limits
            )
            if grant.granted:
                if waited:
                    elapsed = time.perf_counter() - started
                    metrics.LIMITER_WAIT_SECONDS.labels(teacher_name).observe(elapsed)
                return ticket
            metrics.LIMITER_WAITS.labels(teacher_name, grant.reason).inc()
            if waited + grant.wait_s > self._hold_s:
                raise Throttled(
                    teacher_name, _come_back_in(grant.wait_s, self._hold_s), grant.reason
                )
            await asyncio.sleep(grant.wait_s)
            waited += grant.wait_s

    async def leave(
        self,
        ticket: Ticket | None,
        *,
        completion: Completion | None = None,
        error: ProviderError | None = None,
    ) -> None:
        """Settles the call: frees its slot, corrects its tokens, learns the limits."""
        if ticket is None or self._limiter is None:
            return
        rate_limited = error is not None and error.code == RATE_LIMITED
        headers = completion.rate_headers if completion is not None else None
        if error is not None:
            headers = error.rate_headers
        snapshot = parse_rate_headers(headers, now=time.time())
        if rate_limited:
            metrics.TEACHER_RATE_LIMITED.labels(ticket.teacher).inc()
            if error is not None and error.retry_after is not None and snapshot is None:
                snapshot = RateSnapshot(retry_after_s=error.retry_after)
        used = (
            completion.input_tokens + completion.output_tokens
            if completion is not None
            else (ticket.reserved_tokens if not rate_limited else 0)
        )
        usage = await self._limiter.settle(
            ticket.teacher,
            ticket.model,
            ticket.run_id,
            reserved_tokens=ticket.reserved_tokens,
            used_tokens=used,
            limits=ticket.limits,
            snapshot=snapshot,
            answered=completion is not None,
            rate_limited=rate_limited,
        )
        if usage is not None:
            metrics.TEACHER_TOKENS_PER_MIN.labels(ticket.teacher).set(usage.tokens_per_min)
            metrics.TEACHER_CALLS_PER_MIN.labels(ticket.teacher).set(usage.calls_per_min)


def _come_back_in(wait_s: float, hold_s: float) -> float:
    """When a handed-back run should ask again: early enough to be back in a
    worker before its turn (the limiter keeps the turn), so it then waits at
    most a short hold; jittered so that neighbours do not return together."""
    return max(wait_s - hold_s * random.uniform(0.5, 0.8), 0.05)
