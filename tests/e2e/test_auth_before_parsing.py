"""Nothing is parsed before authentication: a body is decoded only once the
token is checked, a body that does not decode is INVALID_ARGUMENT (never UNKNOWN
with a traceback), and every handler kind fails closed."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1.health_pb2 import HealthCheckRequest as Request
from grpc_health.v1.health_pb2 import HealthCheckResponse as Reply

from nex.collector.server.api.interceptors import ServerInterceptor
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import context_ref_service_pb2, teacher_service_pb2

CORRUPT = b"\x0a\x10ab"  # field 1 claims 16 bytes, 2 follow
BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string) holds bytes that are not UTF-8
VALID = context_ref_service_pb2.CreateContextRefRequest(
    nex_context_id="x", nex_context_version="1"
).SerializeToString()

UNARY = (
    "/nex.collector.v1.ContextRefService/CreateContextRef",
    "/nex.collector.v1.TeacherService/BatchCreateRuns",
    "/nex.collector.v1.DatasetService/BuildDataset",
)
STREAMING = ("/nex.collector.v1.TeacherService/WatchRuns",)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _call(channel: grpc.Channel, method: str, body: bytes, token: str | None) -> grpc.RpcError:
    """Sends raw bytes; returns the error the server answered with."""
    if method in STREAMING:
        call = channel.unary_stream(method, None, None)(body, metadata=_metadata(token), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    else:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(method, None, None)(body, metadata=_metadata(token), timeout=30)
    return caught.value


def _bad_request(error: grpc.RpcError) -> error_details_pb2.BadRequest:
    trailers: Any = error.trailing_metadata()
    raw = dict(trailers or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            found = error_details_pb2.BadRequest()
            detail.Unpack(found)
            return found
    raise AssertionError(f"no BadRequest in {status}")


@pytest.fixture
def channel(collector: CollectorEnvironment) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(collector.address) as ch:
        yield ch


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.parametrize("method", UNARY + STREAMING)
@pytest.mark.parametrize("body", [CORRUPT, BAD_UTF8], ids=["corrupt", "bad-utf8"])
def test_a_body_that_does_not_decode_is_unauthenticated_then_invalid(
    collector: CollectorEnvironment,
    channel: grpc.Channel,
    caplog: pytest.LogCaptureFixture,
    method: str,
    body: bytes,
) -> None:
    caplog.set_level(logging.INFO)
    for token in (None, "wrong"):
        assert _call(channel, method, body, token).code() is grpc.StatusCode.UNAUTHENTICATED

    error = _call(channel, method, body, collector.token)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "is not a valid" in (error.details() or "")
    assert [v.field for v in _bad_request(error).field_violations] == ["request"]
    _no_tracebacks(caplog)


def test_a_large_body_without_a_token_is_refused_unread(
    collector: CollectorEnvironment, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # 3 MB of garbage under the 4 MiB limit: decoding it would answer INVALID_ARGUMENT.
    big_garbage = CORRUPT * (3_000_000 // len(CORRUPT))
    method = UNARY[0]
    assert _call(channel, method, big_garbage, None).code() is grpc.StatusCode.UNAUTHENTICATED
    too_big = b"\x00" * (collector.settings.max_request_bytes + 1)
    for token in (None, collector.token):
        assert _call(channel, method, too_big, token).code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    _no_tracebacks(caplog)


def test_reflection_decodes_safely_without_a_token(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    info = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", None, None
    )
    list_services = b"\x3a\x01*"  # list_services: "*"
    assert len(list(info(iter([list_services]), timeout=10))) == 1
    with pytest.raises(grpc.RpcError) as caught:
        list(info(iter([CORRUPT]), timeout=10))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _no_tracebacks(caplog)


def test_health_decodes_safely_without_a_token(channel: grpc.Channel) -> None:
    check = "/grpc.health.v1.Health/Check"
    ok = Request(service="").SerializeToString()
    reply = Reply.FromString(channel.unary_unary(check, None, None)(ok, timeout=10))
    assert reply.status == Reply.SERVING
    assert _call(channel, check, CORRUPT, None).code() is grpc.StatusCode.INVALID_ARGUMENT


# -- every handler kind, through the interceptor alone ------------------------------

TOKEN = "kind-token"
KINDS = ("UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream")


class _Behaviours:
    """One method of each kind; `ran` records every call that got through."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    async def unary_unary(self, request: Request, context: object) -> Reply:
        self.ran.append(request.service)
        return Reply(status=Reply.SERVING)

    async def unary_stream(self, request: Request, context: object) -> AsyncIterator[Reply]:
        self.ran.append(request.service)
        yield Reply(status=Reply.SERVING)

    async def stream_unary(self, requests: AsyncIterator[Request], context: object) -> Reply:
        async for request in requests:
            self.ran.append(request.service)
        return Reply(status=Reply.SERVING)

    async def stream_stream(
        self, requests: AsyncIterator[Request], context: object
    ) -> AsyncIterator[Reply]:
        async for request in requests:
            self.ran.append(request.service)
            yield Reply(status=Reply.SERVING)


async def _kinds_server(behaviours: _Behaviours) -> tuple[aio.Server, str]:
    server = aio.server(interceptors=[ServerInterceptor(frozenset({TOKEN}))])
    des, ser = Request.FromString, Reply.SerializeToString
    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(behaviours.unary_unary, des, ser),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(behaviours.unary_stream, des, ser),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(behaviours.stream_unary, des, ser),
        "StreamStream": grpc.stream_stream_rpc_method_handler(behaviours.stream_stream, des, ser),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Kinds", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _send(channel: aio.Channel, kind: str, body: bytes, token: str | None) -> grpc.StatusCode:
    method, md = f"/t.Kinds/{kind}", _metadata(token)
    # A client still writing its stream when the server has already refused the
    # call may see its own write fail as INTERNAL (grpc aio's client does that),
    # so a caller without the token sends an empty stream: the server must
    # refuse that too, where a missing check would answer OK.
    requests = [body, body] if token == TOKEN else []
    try:
        if kind == "UnaryUnary":
            await channel.unary_unary(method, None, None)(body, metadata=md, timeout=10)
        elif kind == "UnaryStream":
            async for _ in channel.unary_stream(method, None, None)(body, metadata=md, timeout=10):
                pass
        elif kind == "StreamUnary":
            client_stream = channel.stream_unary(method, None, None)
            await client_stream(iter(requests), metadata=md, timeout=10)
        else:
            both = channel.stream_stream(method, None, None)
            async for _ in both(iter(requests), metadata=md, timeout=10):
                pass
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("kind", KINDS)
async def test_every_handler_kind_fails_closed_and_decodes_after_auth(kind: str) -> None:
    behaviours = _Behaviours()
    server, address = await _kinds_server(behaviours)
    good = Request(service="hello").SerializeToString()
    try:
        async with aio.insecure_channel(address) as channel:
            for token in (None, "wrong"):
                for body in (good, CORRUPT):
                    code = await _send(channel, kind, body, token)
                    assert code is grpc.StatusCode.UNAUTHENTICATED
            assert behaviours.ran == []
            assert await _send(channel, kind, CORRUPT, TOKEN) is grpc.StatusCode.INVALID_ARGUMENT
            assert await _send(channel, kind, BAD_UTF8, TOKEN) is grpc.StatusCode.INVALID_ARGUMENT
            assert await _send(channel, kind, good, TOKEN) is grpc.StatusCode.OK
            assert behaviours.ran and set(behaviours.ran) == {"hello"}
    finally:
        await server.stop(None)


def test_a_valid_body_still_reaches_its_servicer(
    collector: CollectorEnvironment, channel: grpc.Channel
) -> None:
    create = "/nex.collector.v1.ContextRefService/CreateContextRef"
    reply = channel.unary_unary(create, None, None)(
        VALID, metadata=_metadata(collector.token), timeout=30
    )
    created = context_ref_service_pb2.CreateContextRefResponse.FromString(reply)
    assert created.context_ref.nex_context_id == "x"
    error = _call(
        channel,
        "/nex.collector.v1.TeacherService/BatchCreateRuns",
        teacher_service_pb2.BatchCreateRunsRequest(batch_id="bat_none").SerializeToString(),
        collector.token,
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # no runs given
    assert "runs" in [v.field for v in _bad_request(error).field_violations]
