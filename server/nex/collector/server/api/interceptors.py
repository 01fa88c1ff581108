"""Server interceptors: request ids in logs, bearer-token auth, and the one place
where exceptions become gRPC statuses.

Authentication comes before parsing. Every handler is re-registered with no
request deserializer, so grpc hands over the raw bytes; the wrapper checks the
token first and only then decodes them with the method's own message class. A
body that does not decode (corrupt wire format, invalid UTF-8 in a string) is
INVALID_ARGUMENT, never UNKNOWN with a traceback, and a caller without a token
gets UNAUTHENTICATED without a single byte parsed. The four handler kinds share
this path, so none of them can skip the check.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from nex.collector.server import metrics
from nex.collector.server.api.errors import rich_status, status_for, trailing_metadata
from nex.collector.server.api.types import Context, Handler
from nex.collector.server.domain.errors import DomainError, InvalidArgument
from nex.collector.server.domain.limits import MAX_REQUEST_ID
from nex.collector.server.logs import request_id_var

log = logging.getLogger("nex.collector.rpc")

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Any: these wrap the handlers of every service, each with its own message classes.
Decode = Callable[[bytes], Any]


def _decoder(handler: Handler, method: str) -> Decode:
    """The method's own deserializer, with every failure made INVALID_ARGUMENT."""
    deserialize: Callable[[bytes], Any] | None = handler.request_deserializer
    if deserialize is None:
        return lambda raw: raw
    descriptor = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    what = getattr(descriptor, "full_name", "") or method.rsplit("/", 1)[-1] + "Request"

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # DecodeError, bad UTF-8, too deep: all the caller's body
            cause = str(exc).rpartition(": ")[2][:200] or type(exc).__name__
            raise InvalidArgument.one(
                "request", f"the body is not a valid {what} ({cause})", reason="MALFORMED_REQUEST"
            ) from None

    return decode


async def _decoded(raw: AsyncIterable[bytes], decode: Decode) -> AsyncIterator[Any]:
    async for item in raw:
        yield decode(item)


# What each kind of handler does with its request once the caller is let in:
# `call(inner, request, context)` for the unary-response kinds, `stream(...)` for
# the streaming-response kinds; `request` is already decoded.
UnaryCall = Callable[[Any, Any, Context], Awaitable[Any]]
StreamCall = Callable[[Any, Any, Context], AsyncIterator[Any]]


def _passing_bytes(
    serialize: Callable[[Any], bytes] | None,
) -> Callable[[Any], bytes] | None:
    if serialize is None:
        return None
    inner = serialize

    def encode(message: Any) -> bytes:
        return message if type(message) is bytes else inner(message)

    return encode


def _guard(handler: Handler, decode: Decode, call: UnaryCall, stream: StreamCall) -> Handler:
    """A copy of `handler` that takes raw bytes and runs `call` / `stream` on the
    decoded request. Every kind is covered: an unknown kind is refused. A
    handler may return or yield a message already encoded (`bytes`): it goes out
    as it is."""
    serialize = _passing_bytes(handler.response_serializer)
    if handler.unary_unary is not None:
        uu = handler.unary_unary

        async def unary_unary(raw: bytes, context: Context) -> Any:
            return await call(uu, lambda: decode(raw), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
    if handler.unary_stream is not None:
        us = handler.unary_stream

        async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
            async for item in stream(us, lambda: decode(raw), context):
                yield item

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, serialize)
    if handler.stream_unary is not None:
        su = handler.stream_unary

        async def stream_unary(raw: AsyncIterable[bytes], context: Context) -> Any:
            return await call(su, lambda: _decoded(raw, decode), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
    if handler.stream_stream is not None:
        ss = handler.stream_stream

        async def stream_stream(raw: AsyncIterable[bytes], context: Context) -> AsyncIterator[Any]:
            async for item in stream(ss, lambda: _decoded(raw, decode), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, None, serialize)
    raise TypeError("a handler with no behaviour")  # grpc has no fifth kind


async def _abort(context: Context, error: BaseException, method: str) -> None:
    code, status = status_for(error)
    metrics.RPCS.labels(method, code.name).inc()
    if isinstance(error, DomainError | NotImplementedError):
        log.info("%s -> %s %s", method, code.name, status.message)
    else:
        log.exception("%s failed", method, exc_info=error)
    await context.abort(code, status.message, trailing_metadata=trailing_metadata(status))


async def _refuse_malformed(context: Context, error: InvalidArgument) -> None:
    code, status = status_for(error)
    await context.abort(code, status.message, trailing_metadata=trailing_metadata(status))


async def _open_call(inner: Any, request: Callable[[], Any], context: Context) -> Any:
    """Health and reflection: no token, no metrics; only a safe decode (of the
    one request, or of each message of a request stream as it is read)."""
    try:
        return await inner(request(), context)
    except InvalidArgument as exc:
        await _refuse_malformed(context, exc)


async def _open_stream(
    inner: Any, request: Callable[[], Any], context: Context
) -> AsyncIterator[Any]:
    try:
        replies = inner(request(), context)
        if inspect.isawaitable(replies):  # Health.Watch writes with context.write()
            await replies
            return
        async for item in replies:
            yield item
    except InvalidArgument as exc:
        await _refuse_malformed(context, exc)


# ignore: generic in grpc-stubs only, the runtime class is not subscriptable
class ServerInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, auth, decoding and error mapping, in that order, for every RPC."""

    def __init__(self, tokens: frozenset[str]) -> None:
        self._tokens = tuple(t.encode() for t in tokens)

    def _authorised(self, metadata: tuple[tuple[str, str | bytes], ...]) -> bool:
        if not self._tokens:
            return True
        for key, value in metadata:
            if key == "authorization":
                raw = value if isinstance(value, bytes) else value.encode()
                scheme, _, token = raw.partition(b" ")
                if scheme.lower() == b"bearer":
                    return any(hmac.compare_digest(token.strip(), t) for t in self._tokens)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        decode = _decoder(handler, method)
        if method.startswith(OPEN_SERVICES):
            return _guard(handler, decode, _open_call, _open_stream)
        metadata = tuple(details.invocation_metadata or ())
        authorised = self._authorised(metadata)
        # Echoed in the trailers: clipped, so a long one cannot overflow them.
        incoming = next((str(v)[:MAX_REQUEST_ID] for k, v in metadata if k == "x-request-id"), None)

        async def before(context: Context) -> None:
            request_id_var.set(incoming or uuid.uuid4().hex[:16])
            context.set_trailing_metadata((("x-request-id", request_id_var.get()),))
            if not authorised:
                status = rich_status(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or wrong bearer token (metadata authorization: Bearer <token>)",
                    "UNAUTHENTICATED",
                )
                log.info("%s -> UNAUTHENTICATED", method)
                metrics.RPCS.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).inc()
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    status.message,
                    trailing_metadata=trailing_metadata(status),
                )

        async def call(inner: Any, request: Callable[[], Any], context: Context) -> Any:
            await before(context)
            started = time.perf_counter()
            try:
                response = await inner(request(), context)
            except Exception as exc:
                if isinstance(exc, aio.AbortError):
                    raise
                await _abort(context, exc, method)
                raise
            elapsed = time.perf_counter() - started
            metrics.RPCS.labels(method, grpc.StatusCode.OK.name).inc()
            metrics.RPC_SECONDS.labels(method).observe(elapsed)
            log.debug("%s OK in %.1f ms", method, elapsed * 1000)
            return response

        async def stream(
            inner: Any, request: Callable[[], Any], context: Context
        ) -> AsyncIterator[Any]:
            await before(context)
            try:
                async for item in inner(request(), context):
                    yield item
            except asyncio.CancelledError:  # the client went away (a watch closed)
                metrics.RPCS.labels(method, grpc.StatusCode.CANCELLED.name).inc()
                raise
            except Exception as exc:
                if isinstance(exc, aio.AbortError):
                    raise
                await _abort(context, exc, method)
            else:
                metrics.RPCS.labels(method, grpc.StatusCode.OK.name).inc()

        return _guard(handler, decode, call, stream)
