"""Reconnect policy of the resumable watches (``watch_batch`` / ``watch_run``)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from ._errors import CollectorError

# Transport failures that some gRPC versions report as INTERNAL or UNKNOWN.
_TRANSIENT_DETAILS = (
    "rst_stream",
    "stream removed",
    "socket closed",
    "connection reset",
    "goaway",
    "broken pipe",
    "failed to connect",
    "connection refused",
    "received http2 header with status: 50",
)


@dataclass(frozen=True, slots=True)
class WatchRetry:
    """How a resumable watch reconnects after losing its stream.

    The n-th consecutive reconnect waits ``min(max_backoff, initial_backoff *
    multiplier**n)``, randomised by +/- ``jitter`` (a fraction), or the server's
    ``RetryInfo`` delay when it sent one. The watch gives up, raising the last
    error, once it has gone ``give_up_after`` seconds without receiving
    anything (``None``: never). Any message received resets both.

    ``idle_timeout``: a stream that delivers nothing, not even a heartbeat,
    for this long is treated as lost and reopened (catches half-open TCP
    connections). Keep it well above the server's heartbeat interval; ``None``
    disables it.
    """

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    give_up_after: float | None = 300.0
    idle_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff must be >= 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait before reconnect number ``attempt`` (0-based)."""
        if hint is not None and hint > 0:
            return hint
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)


def is_transient(err: CollectorError) -> bool:
    """Whether a watch that failed with ``err`` should reconnect and resume.

    UNAVAILABLE (server down, restarting or draining), CANCELLED (only ever
    seen when the server or a proxy cancels: a local cancel raises
    ``asyncio.CancelledError``), ABORTED, DEADLINE_EXCEEDED (a proxy's stream
    limit), and INTERNAL/UNKNOWN that describe a broken transport.
    """
    code = err.code
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ):
        return True
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        text = err.message.lower()
        return any(marker in text for marker in _TRANSIENT_DETAILS)
    return False
