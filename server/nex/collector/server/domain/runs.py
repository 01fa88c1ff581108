"""Runs: their status, a stored run, its status events and why one failed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from nex.collector.server.domain.teacher import ChatMessage, TokenLogprobs


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RunError:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    batch_id: str
    status: RunStatus
    variables: dict[str, str]
    messages: list[ChatMessage]
    request_id: str
    attempt: int
    create_time: datetime
    error: RunError | None = None
    output_text: str = ""
    finish_reason: str = ""
    has_logprobs: bool = False
    tokens: TokenLogprobs | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class RunEvent:
    revision: int
    run_id: str
    batch_id: str
    status: RunStatus
    attempt: int
    error: RunError | None
    time: datetime


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def teacher_gave_up(message: str, teacher_failures: int, workers_lost: int) -> str:
    """A failed run's message: the last teacher error, and how often the teacher
    failed and workers died when it was not the first call that failed."""
    if teacher_failures <= 1 and workers_lost == 0:
        return message
    text = f"teacher failed {_times(teacher_failures)} (last: {message})"
    return text + (f"; worker lost {_times(workers_lost)}" if workers_lost else "")


def workers_gave_up(workers_lost: int, teacher_failures: int) -> str:
    """The message of a run failed because the workers running it kept dying."""
    text = f"worker lost {_times(workers_lost)} while running this run"
    return text + (f"; teacher failed {_times(teacher_failures)}" if teacher_failures else "")


# -- what the workers and the reconciler read from a run and write to it: the
# repositories take and return these, never rows or bind parameters.
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
class RunAttempt:
    """A running run at its attempt, with what deciding its next one needs."""

    id: str
    batch_id: str
    attempt: int
    teacher_failures: int
    lost_count: int


@dataclass(frozen=True, slots=True)
class RunRequest:
    """What a run asks its teacher, at `attempt` (a queued run's last one, a
    running run's current one)."""

    id: str
    attempt: int
    messages: list[ChatMessage]


@dataclass(frozen=True, slots=True)
class AnsweredRun:
    """A running run found answered (its answer stored) and completed."""

    id: str
    batch_id: str
    attempt: int
    cost_usd: float  # the stored answer's cost


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
