"""Server interceptors: request ids in logs, bearer-token auth, and the one place
where exceptions become gRPC statuses."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from nex.collector.server import metrics
from nex.collector.server.api.errors import rich_status, status_for, trailing_metadata
from nex.collector.server.api.types import Context, Handler
from nex.collector.server.domain.errors import DomainError
from nex.collector.server.logs import request_id_var

log = logging.getLogger("nex.collector.rpc")

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _wrap(
    handler: Handler,
    unary: Callable[[Any, Any, Context], Awaitable[Any]] | None = None,
    stream: Callable[[Any, Any, Context], AsyncIterator[Any]] | None = None,
) -> Handler:
    """A copy of `handler` whose behaviour is passed through `unary` / `stream`."""
    if handler.unary_unary and unary:
        inner = handler.unary_unary

        async def uu(request: Any, context: Context) -> Any:
            return await unary(inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            uu, handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream and stream:
        inner_s = handler.unary_stream

        async def us(request: Any, context: Context) -> AsyncIterator[Any]:
            async for item in stream(inner_s, request, context):
                yield item

        return grpc.unary_stream_rpc_method_handler(
            us, handler.request_deserializer, handler.response_serializer
        )
    return handler


async def _abort(context: Context, error: BaseException, method: str) -> None:
    code, status = status_for(error)
    metrics.RPCS.labels(method, code.name).inc()
    if isinstance(error, DomainError | NotImplementedError):
        log.info("%s -> %s %s", method, code.name, status.message)
    else:
        log.exception("%s failed", method, exc_info=error)
    await context.abort(code, status.message, trailing_metadata=trailing_metadata(status))


class ServerInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, auth and error mapping, in that order, for every RPC."""

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
        method: str = details.method  # type: ignore[attr-defined]
        metadata = tuple(details.invocation_metadata or ())  # type: ignore[attr-defined]
        open_method = method.startswith(OPEN_SERVICES)
        authorised = open_method or self._authorised(metadata)
        incoming = next((str(v) for k, v in metadata if k == "x-request-id"), None)

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

        async def unary(inner: Any, request: Any, context: Context) -> Any:
            await before(context)
            started = time.perf_counter()
            try:
                response = await inner(request, context)
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

        async def stream(inner: Any, request: Any, context: Context) -> AsyncIterator[Any]:
            await before(context)
            try:
                async for item in inner(request, context):
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

        if open_method:
            return handler
        return _wrap(handler, unary, stream)
