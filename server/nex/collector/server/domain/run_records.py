"""What the workers and the reconciler read from a run and write to it, as
domain values: the repositories take and return these, never rows or bind
parameters (how each is stored is theirs to know)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from nex.collector.server.domain.batches import RunError
from nex.collector.server.domain.teacher import ChatMessage, RunStatus, TokenLogprobs


@dataclass(frozen=True, slots=True)
class ClaimedRun:
    """A queued run a worker took: running now, at `attempt`."""

    id: str
    batch_id: str
    attempt: int
    messages: list[ChatMessage]
    teacher_failures: int  # teacher calls that failed, the run's whole life long
    lost_count: int  # workers that died running it


@dataclass(frozen=True, slots=True)
class LostRun:
    """A running run nobody will finish: its worker died (or, claimed with no
    owner, its lease ran out), or its stored answer was never marked completed."""

    id: str
    batch_id: str
    attempt: int
    teacher_failures: int
    lost_count: int
    answer_time: datetime | None  # set: the answer is stored, the run is done
    cost_usd: float  # the stored answer's cost

    @property
    def answered(self) -> bool:
        return self.answer_time is not None


@dataclass(frozen=True, slots=True)
class Answer:
    """What a teacher answered, as its run keeps it."""

    text: str
    finish_reason: str
    tokens: TokenLogprobs | None  # None: the teacher gave no logprobs
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: int


@dataclass(frozen=True, slots=True)
class RunAnswer:
    """An answer for the run `run_id` still running at `attempt` (a run that
    moved on keeps nothing)."""

    run_id: str
    attempt: int
    answer: Answer
    answered_at: datetime


@dataclass(frozen=True, slots=True)
class RunEnding:
    """The final state of a running run: completed, failed or cancelled."""

    run_id: str
    status: RunStatus
    end_time: datetime
    error: RunError | None = None
    answer: Answer | None = None
