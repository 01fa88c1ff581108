"""When and how long to wait before calling a teacher again. Pure: the worker
loops with it (SDK retries are off so that attempts are counted in one place)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from nex.collector.server.providers.base import ProviderError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` counts every call, the first included."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def should_retry(self, attempt: int, error: ProviderError) -> bool:
        """Whether to call again after attempt number `attempt` (1-based) failed."""
        return error.retryable and attempt < self.max_attempts

    def delay(
        self, attempt: int, error: ProviderError, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after attempt `attempt` (1-based) failed: exponential
        backoff with full jitter, but at least the provider's `retry_after`;
        never more than `max_delay`."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** max(attempt - 1, 0))
        jittered = (rng or random).uniform(0.0, ceiling)
        if error.retry_after is not None:
            return min(max(jittered, error.retry_after), self.max_delay)
        return jittered
