"""What a provider's answer says about its rate limits.

OpenAI and most OpenAI-compatible servers send `x-ratelimit-limit-requests`,
`-limit-tokens`, `-remaining-*` and `-reset-*` (a Go-style duration: "1s",
"6m0s", "20ms", "1h2m3.5s"). Anthropic sends `anthropic-ratelimit-requests-*`
and `-tokens-*` (`-input-tokens-*`, `-output-tokens-*`), with `-reset` as an
RFC 3339 time. A 429 carries `retry-after-ms` or `retry-after`. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@dataclass(frozen=True, slots=True)
class RateSnapshot:
    """Limits and state read from one answer; None: not sent."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    @property
    def block_s(self) -> float:
        """How long every caller should hold off: a 429's retry-after, or the
        time until a window whose remaining count is 0 resets."""
        waits = [0.0]
        if self.retry_after_s is not None:
            waits.append(self.retry_after_s)
        if self.remaining_requests == 0 and self.reset_requests_s:
            waits.append(self.reset_requests_s)
        if self.remaining_tokens == 0 and self.reset_tokens_s:
            waits.append(self.reset_tokens_s)
        return max(waits)


def parse_duration(value: str) -> float | None:
    """Seconds in "6m0s", "1.5s", "20ms" or a bare number of seconds; None if unreadable."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        return number if math.isfinite(number) and number >= 0 else None
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def _until(value: str, now: float) -> float | None:
    """Seconds until an RFC 3339 time (Anthropic's resets), or a duration."""
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return parse_duration(value)
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - now, 0.0)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return max(int(float(value)), 0)
    except (ValueError, OverflowError):
        return None


def _retry_after(h: Mapping[str, str]) -> float | None:
    ms = h.get("retry-after-ms")
    if ms is not None:
        seconds = parse_duration(ms)
        return None if seconds is None else seconds / 1000
    value = h.get("retry-after")
    return parse_duration(value) if value is not None else None


def parse_rate_headers(headers: Mapping[str, str] | None, *, now: float) -> RateSnapshot | None:
    """The snapshot in lower-cased `headers`; None when they say nothing."""
    if not headers:
        return None
    h = headers
    retry_after = _retry_after(h)
    if "x-ratelimit-limit-requests" in h or "x-ratelimit-limit-tokens" in h:
        reset_r = h.get("x-ratelimit-reset-requests")
        reset_t = h.get("x-ratelimit-reset-tokens")
        return RateSnapshot(
            limit_requests=_int(h.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(h.get("x-ratelimit-limit-tokens")),
            remaining_requests=_int(h.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(h.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=parse_duration(reset_r) if reset_r else None,
            reset_tokens_s=parse_duration(reset_t) if reset_t else None,
            retry_after_s=retry_after,
        )
    prefix = "anthropic-ratelimit-"
    if any(k.startswith(prefix) for k in h):
        tokens = "tokens" if f"{prefix}tokens-limit" in h else "input-tokens"
        reset_r = h.get(f"{prefix}requests-reset")
        reset_t = h.get(f"{prefix}{tokens}-reset")
        return RateSnapshot(
            limit_requests=_int(h.get(f"{prefix}requests-limit")),
            limit_tokens=_int(h.get(f"{prefix}{tokens}-limit")),
            remaining_requests=_int(h.get(f"{prefix}requests-remaining")),
            remaining_tokens=_int(h.get(f"{prefix}{tokens}-remaining")),
            reset_requests_s=_until(reset_r, now) if reset_r else None,
            reset_tokens_s=_until(reset_t, now) if reset_t else None,
            retry_after_s=retry_after,
        )
    if retry_after is not None:
        return RateSnapshot(retry_after_s=retry_after)
    return None
