"""Teacher runs: statuses, generation parameters, prompts and token logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    MOCK = "mock"


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
class GenerationParams:
    """How the teacher generates; None means the provider's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Per-token logprobs of one output, columnar so it maps straight onto
    PostgreSQL arrays and Arrow list columns.

    Position i has `tokens[i]`, `logprobs[i]` and `top_counts[i]` alternatives,
    which are the next `top_counts[i]` entries of `top_tokens` / `top_logprobs`.
    """

    tokens: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_counts: list[int] = field(default_factory=list)
    top_tokens: list[str] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def alternatives(self) -> list[list[tuple[str, float]]]:
        """The top alternatives per position, as (token, logprob) pairs."""
        out: list[list[tuple[str, float]]] = []
        start = 0
        for count in self.top_counts:
            end = start + count
            out.append(
                list(zip(self.top_tokens[start:end], self.top_logprobs[start:end], strict=True))
            )
            start = end
        return out

    @classmethod
    def from_positions(
        cls, positions: list[tuple[str, float, list[tuple[str, float]]]]
    ) -> TokenLogprobs:
        """Builds the columnar form from (token, logprob, [(alt, logprob), …]) rows."""
        result = cls()
        for token, logprob, alts in positions:
            result.tokens.append(token)
            result.logprobs.append(logprob)
            result.top_counts.append(len(alts))
            for alt_token, alt_logprob in alts:
                result.top_tokens.append(alt_token)
                result.top_logprobs.append(alt_logprob)
        return result


@dataclass(frozen=True, slots=True)
class CompletedRun:
    """A completed run as the distillation pipeline reads it."""

    run_id: str
    batch_id: str
    template_id: str
    template_version: int
    provider: str
    model: str
    variables: dict[str, str]
    messages: list[ChatMessage]
    output_text: str
    finish_reason: str
    tokens: TokenLogprobs | None  # None: the teacher gave no logprobs (e.g. Anthropic)
    input_tokens: int
    output_tokens: int
    latency_ms: int
    scores: dict[str, float]  # scores posted by callers (SetRunScores), e.g. from a judge
