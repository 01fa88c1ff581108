"""What a teacher is asked and answers: generation parameters, prompts, token
logprobs, and a completed run as the distillation pipeline reads it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import overload


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    MOCK = "mock"


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

    tokens: Sequence[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_counts: list[int] = field(default_factory=list)
    top_tokens: Sequence[str] = field(default_factory=list)
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
        tokens: list[str] = []
        top_tokens: list[str] = []
        for token, logprob, alts in positions:
            tokens.append(token)
            result.logprobs.append(logprob)
            result.top_counts.append(len(alts))
            for alt_token, alt_logprob in alts:
                top_tokens.append(alt_token)
                result.top_logprobs.append(alt_logprob)
        return cls(tokens, result.logprobs, result.top_counts, top_tokens, result.top_logprobs)


TOKEN_SEPARATOR = "\x1f"
"""Joins token texts in `PackedStrings` (ASCII unit separator)."""


class PackedStrings(Sequence[str]):
    """`length` strings held as one, joined by TOKEN_SEPARATOR, split only when
    read one by one: a dataset build moves token texts from PostgreSQL to Arrow
    without a Python object per token. The reader guarantees that no string
    contains the separator (``joined.count(TOKEN_SEPARATOR) == length - 1``)."""

    __slots__ = ("_items", "joined", "length")

    def __init__(self, joined: str, length: int) -> None:
        self.joined = joined
        self.length = length
        self._items: list[str] | None = None

    @staticmethod
    def fits(joined: str, length: int) -> bool:
        """Whether `joined` splits into exactly `length` strings."""
        return joined == "" if length == 0 else joined.count(TOKEN_SEPARATOR) == length - 1

    def _list(self) -> list[str]:
        if self._items is None:
            self._items = self.joined.split(TOKEN_SEPARATOR) if self.length else []
        return self._items

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._list()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return self.length == other.length and self.joined == other.joined
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, like list

    def __repr__(self) -> str:
        return f"PackedStrings({self._list()!r})"


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
