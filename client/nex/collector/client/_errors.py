"""Typed exceptions, and the one place gRPC errors are mapped to them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

if TYPE_CHECKING:
    from ._types import DatasetManifest

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field of a request, e.g. ``runs[1].variables``."""

    field: str
    description: str


class CollectorError(Exception):
    """Base of every error the client raises for a failed call.

    ``code`` is the gRPC status code, ``message`` the status message,
    ``reason`` the UPPER_SNAKE ``google.rpc.ErrorInfo`` reason (None when the
    server sent none), ``domain`` and ``metadata`` the rest of that ErrorInfo,
    ``field_violations`` the ``google.rpc.BadRequest`` details, and
    ``retry_delay`` the ``google.rpc.RetryInfo`` delay in seconds.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        domain: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Iterable[FieldViolation] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations)
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        for v in self.field_violations:
            text += f"\n  {v.field}: {v.description}"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, message={self.message!r}, "
            f"reason={self.reason!r})"
        )


class InvalidArgumentError(CollectorError):
    """INVALID_ARGUMENT: see ``field_violations`` for each bad field."""


class NotFoundError(CollectorError):
    """NOT_FOUND."""


class AlreadyExistsError(CollectorError):
    """ALREADY_EXISTS."""


class FailedPreconditionError(CollectorError):
    """FAILED_PRECONDITION (e.g. evidence links in standalone mode)."""


class UnauthenticatedError(CollectorError):
    """UNAUTHENTICATED: no token or a wrong one."""


class PermissionDeniedError(CollectorError):
    """PERMISSION_DENIED."""


class ResourceExhaustedError(CollectorError):
    """RESOURCE_EXHAUSTED; ``retry_delay`` may say when to try again."""


class UnavailableError(CollectorError):
    """UNAVAILABLE: the server cannot be reached or is shutting down."""


class DeadlineExceededError(CollectorError):
    """DEADLINE_EXCEEDED: the call took longer than its timeout."""


class RpcCancelledError(CollectorError):
    """CANCELLED by the server. (A call cancelled locally raises
    ``asyncio.CancelledError`` as usual, never this.)"""


class UnimplementedError(CollectorError):
    """UNIMPLEMENTED: the server does not offer this call (yet)."""


class InternalError(CollectorError):
    """INTERNAL, UNKNOWN or DATA_LOSS: a fault on the server's side."""


class DatasetBuildError(CollectorError):
    """Raised by ``wait_dataset`` when the build ended FAILED; ``dataset`` is the
    manifest, ``reason``/``message`` its ``error``."""

    def __init__(self, dataset: DatasetManifest) -> None:
        err = dataset.error
        super().__init__(
            grpc.StatusCode.ABORTED,
            err.message if err else "dataset build failed",
            reason=err.code if err else None,
            metadata={"dataset_id": dataset.id},
        )
        self.dataset = dataset


_BY_CODE: dict[grpc.StatusCode, type[CollectorError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RpcCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
}


def _status_details(trailing: Iterable[Any] | None) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except DecodeError:
                return None
            return status
    return None


def from_rpc_error(err: grpc.RpcError) -> CollectorError:
    """Builds the typed error for a failed call (sync ``grpc.RpcError`` or
    ``grpc.aio.AioRpcError``), reading the ``google.rpc.Status`` details."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = (err.details() if callable(getattr(err, "details", None)) else None) or ""
    trailing = err.trailing_metadata() if callable(getattr(err, "trailing_metadata", None)) else ()

    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    retry_delay: float | None = None
    status = _status_details(trailing)
    if status is not None:
        message = status.message or message
        for any_ in status.details:
            if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_.Unpack(info)
                reason, domain = info.reason or None, info.domain or None
                metadata.update(info.metadata)
            elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_.Unpack(bad)
                violations.extend(
                    FieldViolation(v.field, v.description) for v in bad.field_violations
                )
            elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                any_.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()

    cls = _BY_CODE.get(code, CollectorError)
    return cls(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        retry_delay=retry_delay,
    )


@contextmanager
def map_errors() -> Iterator[None]:
    """Re-raises any ``grpc.RpcError`` inside the block as its typed
    ``CollectorError`` (the original is kept as ``__cause__``). Works around
    ``await`` and ``async for`` too, since it only inspects the exception."""
    try:
        yield
    except grpc.RpcError as err:
        raise from_rpc_error(err) from err
