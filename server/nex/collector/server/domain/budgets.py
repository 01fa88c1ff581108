"""Hard budget caps: scopes that money is counted in, worst-case costs, pauses.

A call reserves its worst case (prompt-token bound x input price + max_tokens x
output price) in every scope it counts against before it is made, and its
result settles the reservation to the real cost. PostgreSQL guards each
reservation (spent + reserved + amount <= cap), so the sum of real costs never
passes a cap, whatever the number of workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime

from nex.collector.server.domain.errors import Violations

BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
MAX_COST_USD = "max_cost_usd"


def batch_scope(batch_id: str) -> str:
    return f"batch:{batch_id}"


TEACHER_SCOPE_PREFIX = "teacher:"


def teacher_day_scope(teacher: str, day: date) -> str:
    """A teacher's spend on one UTC day (for a daily cap from the teachers file)."""
    return f"{TEACHER_SCOPE_PREFIX}{teacher}:{day.isoformat()}"


@dataclass(frozen=True, slots=True)
class Budget:
    """Money of one scope, in USD."""

    max_cost_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    @property
    def remaining_usd(self) -> float | None:
        if self.max_cost_usd is None:
            return None
        return max(self.max_cost_usd - self.spent_usd - self.reserved_usd, 0.0)


@dataclass(frozen=True, slots=True)
class BatchPause:
    """Why no run of a batch may start."""

    reason: str
    message: str
    time: datetime
    # The budget scope that was full: "batch:<id>", or "teacher:<name>:<day>"
    # (a daily cap; the reconciler resumes the batch on the next UTC day).
    scope: str = ""


@dataclass(frozen=True, slots=True)
class CostEstimate:
    runs: int = 0
    prompt_tokens_bound: int = 0
    output_tokens_bound: int = 0
    worst_case_cost_usd: float = 0.0
    priced: bool = False


def check_cap(v: Violations, field: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        v.add(field, "must be a finite amount of USD, 0 or more")
