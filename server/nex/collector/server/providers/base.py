"""The one interface every teacher provider implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    # The answer's rate-limit headers (x-ratelimit-*, anthropic-ratelimit-*),
    # lower-cased, for the shared limiter to learn from; None: none sent.
    rate_headers: Mapping[str, str] | None = None


class ProviderError(Exception):
    """A failed teacher call. `retryable` calls may be tried again after
    `retry_after` seconds (from the provider's Retry-After, when it sent one).
    `maybe_billed`: the request may have reached the teacher and no answer said
    it failed (a timeout, a connection cut mid-way): providers bill a generation
    the client stopped waiting for, so the call's worst case counts."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        rate_headers: Mapping[str, str] | None = None,
        maybe_billed: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.rate_headers = rate_headers
        self.maybe_billed = maybe_billed


def rate_headers(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The rate-limit headers of an answer, lower-cased (None when there are none)."""
    found = {
        k.lower(): v
        for k, v in headers.items()
        if k[:2] in ("x-", "X-", "an", "An", "re", "Re")
        and k.lower().startswith(("x-ratelimit-", "anthropic-ratelimit-", "retry-after"))
    }
    return found or None


class TeacherProvider(Protocol):
    name: str
    supports_logprobs: bool

    async def generate(self, request: GenerationRequest) -> Completion:
        """One call of the teacher, no retries (the caller retries); raises ProviderError."""
        ...

    async def aclose(self) -> None: ...
