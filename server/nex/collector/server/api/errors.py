"""The one table from domain errors to gRPC status, with google.rpc.Status details."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from nex.collector.server.domain import errors as domain

log = logging.getLogger(__name__)

ERROR_DOMAIN = "collector.nex"

_STATUS: list[tuple[type[domain.DomainError], grpc.StatusCode]] = [
    (domain.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (domain.NotFound, grpc.StatusCode.NOT_FOUND),
    (domain.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (domain.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (domain.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (domain.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


# Codes a caller may retry: their status carries google.rpc.RetryInfo.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
DEFAULT_RETRY_DELAY_S = 1.0


def status_code_for(error: domain.DomainError) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[domain.FieldViolation] | None = None,
    retry_after_s: float | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo; BadRequest for bad input; RetryInfo for
    UNAVAILABLE and RESOURCE_EXHAUSTED (the delay given, else a default)."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata or {})
        )
    ]
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in violations
                    ]
                )
            )
        )
    if code in _RETRYABLE:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(
            int((DEFAULT_RETRY_DELAY_S if retry_after_s is None else retry_after_s) * 1e9)
        )
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, status_pb2.Status]:
    """The status a caller sees for `error`; never a traceback."""
    if isinstance(error, domain.DomainError):
        code = status_code_for(error)
        violations = error.violations if isinstance(error, domain.InvalidArgument) else None
        return code, rich_status(
            code, error.message, error.reason, error.metadata, violations, error.retry_after_s
        )
    if isinstance(error, NotImplementedError):
        code = grpc.StatusCode.UNIMPLEMENTED
        return code, rich_status(code, "this method is not implemented yet", "UNIMPLEMENTED")
    code = grpc.StatusCode.INTERNAL
    return code, rich_status(code, "internal error; see the server log", "INTERNAL")


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return (("grpc-status-details-bin", status.SerializeToString()),)
