"""The one table from domain errors to gRPC status, with google.rpc.Status details."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from nex.collector.server.domain import errors as domain
from nex.collector.server.domain.errors import ELLIPSIS
from nex.collector.server.domain.limits import (
    MAX_DESCRIPTION,
    MAX_ERROR_MESSAGE_BYTES,
    MAX_FIELD_PATH,
    MAX_STATUS_DETAILS_BYTES,
    MAX_VIOLATIONS,
)

log = logging.getLogger(__name__)

ERROR_DOMAIN = "collector.nex"

_STATUS: list[tuple[type[domain.DomainError], grpc.StatusCode]] = [
    (domain.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (domain.NotFound, grpc.StatusCode.NOT_FOUND),
    (domain.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (domain.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (domain.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (domain.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (domain.Aborted, grpc.StatusCode.ABORTED),
]


# Codes a caller may retry: their status carries google.rpc.RetryInfo.
_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)
DEFAULT_RETRY_DELAY_S = 1.0


def status_code_for(error: domain.DomainError) -> grpc.StatusCode:
    for cls, code in _STATUS:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def clip_bytes(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes (on a character boundary), an
    ellipsis marking the cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    budget = max(limit - len(ELLIPSIS.encode()), 0)
    return raw[:budget].decode("utf-8", "ignore") + ELLIPSIS


def _violations(
    items: list[domain.FieldViolation],
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    shown = items[:MAX_VIOLATIONS]
    out = [
        error_details_pb2.BadRequest.FieldViolation(
            field=clip_bytes(v.field, MAX_FIELD_PATH),
            description=clip_bytes(v.description, MAX_DESCRIPTION),
        )
        for v in shown
    ]
    if len(items) > len(shown):
        out.append(
            error_details_pb2.BadRequest.FieldViolation(
                field=ELLIPSIS, description=f"and {len(items) - len(shown)} more violations"
            )
        )
    return out


def _fill(
    status: status_pb2.Status,
    info: error_details_pb2.ErrorInfo,
    bad: list[error_details_pb2.BadRequest.FieldViolation],
    retry: error_details_pb2.RetryInfo | None,
) -> None:
    del status.details[:]
    status.details.append(_pack(info))
    if bad:
        status.details.append(_pack(error_details_pb2.BadRequest(field_violations=bad)))
    if retry is not None:
        status.details.append(_pack(retry))


def rich_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[domain.FieldViolation] | None = None,
    retry_after_s: float | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo; BadRequest for bad input; RetryInfo for
    UNAVAILABLE, RESOURCE_EXHAUSTED and ABORTED (the delay given, else a default).

    Whatever a caller sent, the status stays small: the message, each field
    violation and each metadata value are clipped, and violations are dropped
    from the end until the whole fits MAX_STATUS_DETAILS_BYTES. A status that
    overflowed gRPC's metadata limit would reach the caller as RESOURCE_EXHAUSTED
    instead of its real code."""
    info = error_details_pb2.ErrorInfo(
        reason=clip_bytes(reason, MAX_FIELD_PATH),
        domain=ERROR_DOMAIN,
        metadata={
            clip_bytes(k, MAX_FIELD_PATH): clip_bytes(v, MAX_DESCRIPTION)
            for k, v in list((metadata or {}).items())[:MAX_VIOLATIONS]
        },
    )
    bad = _violations(violations or [])
    retry = None
    if code in _RETRYABLE:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(
            int((DEFAULT_RETRY_DELAY_S if retry_after_s is None else retry_after_s) * 1e9)
        )
        retry = error_details_pb2.RetryInfo(retry_delay=delay)
    status = status_pb2.Status(
        code=code.value[0], message=clip_bytes(message, MAX_ERROR_MESSAGE_BYTES)
    )

    _fill(status, info, bad, retry)
    while status.ByteSize() > MAX_STATUS_DETAILS_BYTES and (bad or info.metadata):
        if len(bad) > 1:
            bad.pop()
        elif info.metadata:
            info.metadata.clear()
        else:
            bad.clear()
        _fill(status, info, bad, retry)
    return status


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
