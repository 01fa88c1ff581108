"""The one interface every teacher provider implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nex.collector.server.domain.teacher import ChatMessage, GenerationParams, TokenLogprobs


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    model: str
    messages: Sequence[ChatMessage]
    params: GenerationParams


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    finish_reason: str  # normalised: "stop", "length", "content_filter", "tool_calls", …
    tokens: TokenLogprobs | None  # None when the provider returns no logprobs
    input_tokens: int
    output_tokens: int


class ProviderError(Exception):
    """A failed teacher call. `retryable` calls may be tried again after
    `retry_after` seconds (from the provider's Retry-After, when it sent one)."""

    def __init__(
        self, code: str, message: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class TeacherProvider(Protocol):
    name: str
    supports_logprobs: bool

    async def generate(self, request: GenerationRequest) -> Completion:
        """One call of the teacher, no retries (the caller retries); raises ProviderError."""
        ...

    async def aclose(self) -> None: ...
