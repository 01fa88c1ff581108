"""Bearer-token metadata added to every call by channel interceptors."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import Any

from grpc import aio


def _with_token(details: aio.ClientCallDetails, header: tuple[str, str]) -> aio.ClientCallDetails:
    metadata = aio.Metadata()
    for key, value in details.metadata or ():
        if key != "authorization":
            metadata.add(key, value)
    metadata.add(*header)
    return aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _TokenInterceptor:
    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def __repr__(self) -> str:  # never print the token
        return f"{type(self).__name__}(token=***)"


# ignore: generic in grpc-stubs only, the runtime class is not subscriptable
class _UnaryUnaryToken(_TokenInterceptor, aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_with_token(client_call_details, self._header), request)


# ignore: generic in grpc-stubs only, the runtime class is not subscriptable
class _UnaryStreamToken(_TokenInterceptor, aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(
        self,
        continuation: Callable[[aio.ClientCallDetails, Any], Any],
        client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> AsyncIterable[Any] | Any:
        return await continuation(_with_token(client_call_details, self._header), request)


def bearer_token_interceptors(token: str) -> list[Any]:
    """Interceptors sending ``authorization: Bearer <token>`` with every call.

    One object per call kind: a ``grpc.aio`` channel files each interceptor
    under the first kind it implements only."""
    return [_UnaryUnaryToken(token), _UnaryStreamToken(token)]
