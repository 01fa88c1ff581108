"""The one mapping from SDK and transport failures to `ProviderError`.

Every message that leaves here is scrubbed of API keys: the configured ones
verbatim, and anything shaped like a key (providers echo keys back in 401s).
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai

from nex.collector.server.providers.base import ProviderError, rate_headers

RATE_LIMITED = "PROVIDER_RATE_LIMITED"
# A 429 that waiting does not cure (OpenAI's `insufficient_quota`: no credit left).
QUOTA_EXHAUSTED = "PROVIDER_QUOTA_EXHAUSTED"
UNAVAILABLE = "PROVIDER_UNAVAILABLE"
TIMEOUT = "PROVIDER_TIMEOUT"
CONNECTION = "PROVIDER_CONNECTION"
BAD_REQUEST = "PROVIDER_BAD_REQUEST"
AUTH = "PROVIDER_AUTH"
BAD_RESPONSE = "PROVIDER_BAD_RESPONSE"

_MAX_MESSAGE = 500
_REDACTED = "[REDACTED]"
# sk-…, sk-proj-…, sk-ant-api03-…, and Bearer tokens; also partial echoes like "sk-abc***xyz".
_KEY_PATTERN = re.compile(r"(?:\bsk-[A-Za-z0-9_\-*.]{4,}|(?i:bearer)\s+[A-Za-z0-9_\-.~+/=*]{8,})")

_STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)
_TIMEOUT_ERRORS = (
    openai.APITimeoutError,
    anthropic.APITimeoutError,
    httpx2.TimeoutException,
    TimeoutError,
)
# Failures before the request left: nothing can have been billed. (The SDKs'
# aiohttp transport re-raises aiohttp's errors as httpx ones, the original as the
# cause, and maps every aiohttp connection error to ConnectTimeout: only the
# original says whether the request was sent.)
_NOT_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    httpx2.ConnectError,
    httpx2.PoolTimeout,
)
_CONNECTION_ERRORS = (
    openai.APIConnectionError,
    anthropic.APIConnectionError,
    httpx2.TransportError,
    ConnectionError,
)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets nor anything that looks like an API key."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, _REDACTED)
    return _KEY_PATTERN.sub(_REDACTED, text)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` (seconds or an
    HTTP date); None when absent or unreadable."""
    headers = {key.lower(): value for key, value in headers.items()}
    millis = _finite(headers.get("retry-after-ms"))
    if millis is not None:
        return max(millis / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def from_status(
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
) -> ProviderError:
    """The ProviderError for an HTTP error answer."""
    text = f"HTTP {status}: {scrub(message, secrets)[:_MAX_MESSAGE]}"
    retry_after = parse_retry_after(headers) if headers is not None else None
    if status == 429:
        if "quota" in message.lower() and "exceeded your current quota" in message.lower():
            return ProviderError(QUOTA_EXHAUSTED, text, retryable=False)
        return ProviderError(
            RATE_LIMITED,
            text,
            retryable=True,
            retry_after=retry_after,
            rate_headers=rate_headers(headers) if headers is not None else None,
        )
    if status >= 500:  # includes Anthropic's 529 "overloaded"
        return ProviderError(UNAVAILABLE, text, retryable=True, retry_after=retry_after)
    if status == 408:
        return ProviderError(TIMEOUT, text, retryable=True, retry_after=retry_after)
    if status == 409:  # OpenAI answers 409 on transient lock contention; its SDK retries it
        return ProviderError(UNAVAILABLE, text, retryable=True, retry_after=retry_after)
    if status in (401, 403):
        return ProviderError(AUTH, text, retryable=False)
    return ProviderError(BAD_REQUEST, text, retryable=False)


def to_provider_error(exc: BaseException, *, secrets: Iterable[str | None] = ()) -> ProviderError:
    """Maps any failure of a teacher call to a ProviderError."""
    secrets = tuple(secrets)
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, _STATUS_ERRORS):
        return from_status(
            exc.status_code,
            _api_message(exc.body) or exc.message,
            headers=exc.response.headers,
            secrets=secrets,
        )
    if isinstance(exc, _TIMEOUT_ERRORS):
        return ProviderError(
            TIMEOUT,
            "the teacher did not answer in time",
            retryable=True,
            maybe_billed=_maybe_sent(exc),
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        detail = scrub(str(exc.__cause__ or exc), secrets)[:_MAX_MESSAGE]
        return ProviderError(
            CONNECTION,
            f"could not reach the teacher: {detail}",
            retryable=True,
            maybe_billed=_maybe_sent(exc),
        )
    if isinstance(exc, openai.OpenAIError | anthropic.AnthropicError) or (
        isinstance(exc, TypeError) and "authentication" in str(exc)
    ):
        # Raised before any request: e.g. no credentials configured.
        return ProviderError(AUTH, scrub(str(exc), secrets)[:_MAX_MESSAGE], retryable=False)
    detail = scrub(f"{type(exc).__name__}: {exc}", secrets)[:_MAX_MESSAGE]
    return ProviderError(BAD_RESPONSE, f"unreadable teacher response ({detail})", retryable=True)


def _maybe_sent(exc: BaseException) -> bool:
    """Whether the request may have reached the teacher before `exc`: unless its
    causes show it failed while connecting, assume it did (the safe side for a
    budget is to count a call that was perhaps billed)."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 16:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(e, _NOT_SENT) for e in chain):
        return False
    # httpx's own transport raises ConnectTimeout only while connecting; the
    # aiohttp transport raises it for any connection error (see _NOT_SENT).
    return not any(isinstance(e, httpx2.ConnectTimeout) for e in chain) or any(
        isinstance(e, aiohttp.ClientError) for e in chain
    )


def _api_message(body: object) -> str | None:
    """`error.message` of an OpenAI/Anthropic error body (the SDKs give either
    the whole body or its `error` member)."""
    if isinstance(body, dict):
        inner: Any = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return None


@contextmanager
def provider_errors(secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Re-raises whatever fails inside as a ProviderError."""
    try:
        yield
    except ProviderError:
        raise
    except Exception as exc:
        raise to_provider_error(exc, secrets=secrets) from None
