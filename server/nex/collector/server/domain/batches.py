"""Teacher batches: their status, counts and checks (the runs: domain/runs.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from nex.collector.server.domain.budgets import BatchPause, Budget
from nex.collector.server.domain.errors import Violations, key_path
from nex.collector.server.domain.limits import (
    MAX_SCORE_NAME,
    MAX_SCORES,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
)
from nex.collector.server.domain.runs import RunError, RunStatus, Usage
from nex.collector.server.domain.scoring import BUILTIN_SCORES
from nex.collector.server.domain.teacher import GenerationParams


class BatchStatus(StrEnum):
    OPEN = "open"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


class ExecutionMode(StrEnum):
    """How a batch's runs reach the teacher: one call each, through the
    provider's Batch API, or the Batch API with an online fallback before the
    deadline."""

    ONLINE = "online"
    PROVIDER_BATCH = "provider_batch"
    AUTO = "auto"

    @property
    def via_provider(self) -> bool:
        return self is not ExecutionMode.ONLINE


# A provider job's states once it is over (any other: still at the provider).
PROVIDER_JOB_FINAL_STATES = ("ingested", "abandoned")


@dataclass(frozen=True, slots=True)
class ProviderJobView:
    """One provider batch job as GetBatch shows it."""

    id: str
    teacher: str
    provider_job_id: str
    input_file_id: str
    state: str
    request_total: int
    request_completed: int
    request_failed: int
    submit_time: datetime | None
    finish_time: datetime | None
    error: RunError | None
    cost_usd: float = 0.0
    online_cost_usd: float = 0.0
    # When its state or counts last changed.
    update_time: datetime | None = None

    @property
    def final(self) -> bool:
        """Ingested or abandoned: the job changes no more."""
        return self.state in PROVIDER_JOB_FINAL_STATES


@dataclass(frozen=True, slots=True)
class RunCounts:
    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.running + self.completed + self.failed + self.cancelled

    @property
    def active(self) -> int:
        return self.queued + self.running

    @classmethod
    def from_mapping(cls, counts: Mapping[str, int]) -> RunCounts:
        return cls(**{s.value: int(counts.get(s.value, 0)) for s in RunStatus})


@dataclass(frozen=True, slots=True)
class Batch:
    id: str
    name: str
    template_id: str
    provider: str
    model: str
    params: GenerationParams
    context_ref_id: str | None
    labels: dict[str, str]
    link_evidence: bool
    create_time: datetime
    cancel_time: datetime | None = None
    max_cost_usd: float | None = None
    pause: BatchPause | None = None
    execution_mode: ExecutionMode = ExecutionMode.ONLINE
    deadline_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class BatchView:
    """A batch with what is derived from its runs."""

    batch: Batch
    counts: RunCounts
    usage: Usage
    budget: Budget = field(default_factory=Budget)
    # Sum of the prompt-token bounds of the queued runs (for the worst case).
    queued_prompt_tokens_bound: int = 0
    # Filled in by the service, which knows prices.
    queued_worst_case_usd: float = 0.0
    provider_jobs: tuple[ProviderJobView, ...] = ()

    @property
    def provider_batch_saved_usd(self) -> float:
        return round(sum(j.online_cost_usd - j.cost_usd for j in self.provider_jobs), 9)

    @property
    def status(self) -> BatchStatus:
        if self.batch.cancel_time is not None:
            return BatchStatus.CANCELLED
        if self.counts.total == 0:
            return BatchStatus.OPEN
        if self.batch.pause is not None and self.counts.queued and not self.counts.running:
            return BatchStatus.PAUSED
        return BatchStatus.RUNNING if self.counts.active else BatchStatus.COMPLETED


def check_params(v: Violations, field: str, p: GenerationParams) -> None:
    def bad(name: str, what: str) -> None:
        v.add(f"{field}.{name}", what)

    if p.temperature is not None and not (0.0 <= p.temperature <= 2.0):
        bad("temperature", "must be between 0 and 2")
    if p.top_p is not None and not (0.0 < p.top_p <= 1.0):
        bad("top_p", "must be in (0, 1]")
    if p.max_tokens is not None and not (1 <= p.max_tokens <= 1_000_000):
        bad("max_tokens", "must be between 1 and 1000000")
    if p.top_logprobs is not None and not (0 <= p.top_logprobs <= MAX_TOP_LOGPROBS):
        bad("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        bad("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
    if any(not s for s in p.stop):
        bad("stop", "stop sequences must not be empty")
    if any(len(s) > MAX_STOP_LENGTH for s in p.stop):
        bad("stop", f"stop sequences are at most {MAX_STOP_LENGTH} characters")


def check_scores(v: Violations, field: str, scores: Mapping[str, float]) -> None:
    if not scores:
        v.add(field, "give at least one score")
    if len(scores) > MAX_SCORES:
        v.add(field, f"at most {MAX_SCORES} scores per call, got {len(scores)}")
        return
    for name, value in scores.items():
        if not name or len(name) > MAX_SCORE_NAME:
            v.add(key_path(field, name), f"score names are 1-{MAX_SCORE_NAME} characters")
        if name in BUILTIN_SCORES:
            v.add(key_path(field, name), "is a built-in score (computed by the collector)")
        if not math.isfinite(value):
            v.add(key_path(field, name), "must be a finite number")
