"""Errors the domain raises; `api/errors.py` maps each to one gRPC status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from nex.collector.server.domain.limits import MAX_QUOTE

ELLIPSIS = "…"

T = TypeVar("T")


def clip(value: str, limit: int = MAX_QUOTE) -> str:
    """`value` cut to `limit` characters, an ellipsis marking the cut: every error
    that repeats a caller's input goes through here, so no error grows with it."""
    return value if len(value) <= limit else value[: max(limit - 1, 0)] + ELLIPSIS


def quote(value: str, limit: int = MAX_QUOTE) -> str:
    """A caller's value as an error quotes it: clipped, then repr'd (so control
    characters show as escapes)."""
    return repr(clip(value, limit))


def key_path(field: str, key: str) -> str:
    """The path of a map entry, e.g. ``labels['k']`` or ``runs[1].variables['x']``."""
    return f"{field}[{quote(key)}]"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str  # request field path, e.g. "runs[1].variables"
    description: str


class DomainError(Exception):
    """Base: `reason` is a stable UPPER_SNAKE code a caller can switch on;
    `retry_after_s`, when set, tells the caller how long to wait before retrying."""

    reason = "ERROR"
    retry_after_s: float | None = None

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], *, reason: str | None = None) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}", reason=reason)

    @classmethod
    def one(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(DomainError):
    reason = "NOT_FOUND"

    def __init__(self, resource: str, id_: str) -> None:
        super().__init__(
            f"{resource} {quote(id_)} not found", metadata={"resource": resource, "id": clip(id_)}
        )
        self.reason = f"{resource.upper()}_NOT_FOUND"


def require(value: T | None, resource: str, id_: str) -> T:
    """`value`, or NotFound(resource, id_) when there is none."""
    if value is None:
        raise NotFound(resource, id_)
    return value


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


def integration_disabled(what: str) -> FailedPrecondition:
    """What standalone mode answers when asked for something only NEX can take."""
    return FailedPrecondition(
        f"{what} need integrated mode: set MODE_INTEGRATION=integrated and NEX_BASE_URL",
        reason="INTEGRATION_DISABLED",
    )


class _Retryable(DomainError):
    """An error the caller may retry, after `retry_after_s` seconds."""

    retry_after_s: float | None = 1.0

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class Unavailable(_Retryable):
    """A dependency (NEX, a teacher) is down; the caller may retry."""

    reason = "UNAVAILABLE"


class Aborted(_Retryable):
    """The operation was cut short and may be resumed (e.g. a watch that fell
    too far behind resumes from its last revision)."""

    reason = "ABORTED"


class ResourceExhausted(_Retryable):
    reason = "RESOURCE_EXHAUSTED"


class Violations:
    """Collects field violations and raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def extend(self, items: Iterable[FieldViolation], prefix: str = "") -> None:
        for v in items:
            self.add(f"{prefix}{v.field}" if prefix else v.field, v.description)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)
