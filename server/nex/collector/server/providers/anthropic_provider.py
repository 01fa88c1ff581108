"""Anthropic Messages as a teacher. Anthropic returns no logprobs: `tokens` is
always None, never made up.

This SDK speaks API version 2026-10-21, which rejects `temperature`, `top_p`
and `top_k` with a 400 (and its `create()` no longer takes them), so those
params are not sent; nor are `seed` and `top_logprobs`, which the API lacks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import anthropic
import httpx2
import orjson
from anthropic.types import MessageParam

from nex.collector.server.providers.base import Completion, GenerationRequest, rate_headers
from nex.collector.server.providers.errors import provider_errors

DEFAULT_MAX_TOKENS = 1024  # the API requires max_tokens
DEFAULT_MAX_CONNECTIONS = 512

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider:
    """`api_key` / `base_url` default to ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL."""

    name = "anthropic"
    supports_logprobs = False

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        name: str = "anthropic",
    ) -> None:
        self.name = name
        limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        with provider_errors((api_key,)):
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout,
                max_retries=0,  # retries happen in RetryPolicy, attempts counted once
                http_client=anthropic.DefaultAioHttpClient(timeout=timeout, limits=limits),
            )
        self._secrets = (api_key, self._client.api_key, self._client.auth_token)

    async def generate(self, request: GenerationRequest) -> Completion:
        params = request.params
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        messages = [
            {"role": m.role, "content": m.content} for m in request.messages if m.role != "system"
        ]
        with provider_errors(self._secrets):
            raw = await self._client.messages.with_raw_response.create(
                model=request.model,
                max_tokens=params.max_tokens or DEFAULT_MAX_TOKENS,
                messages=cast(list[MessageParam], messages),
                system=system or anthropic.omit,
                stop_sequences=list(params.stop) if params.stop else anthropic.omit,
            )
            completion = parse_message(orjson.loads(await raw.read()))
            headers = rate_headers(raw.headers)
            if headers is None:
                return completion
            return dataclasses.replace(completion, rate_headers=headers)

    async def aclose(self) -> None:
        await self._client.close()


def parse_message(body: Any) -> Completion:
    """A Completion from a Messages JSON body."""
    text = "".join(b["text"] for b in body["content"] if b.get("type") == "text")
    stop_reason = body.get("stop_reason") or "unknown"
    usage = body.get("usage") or {}
    input_tokens = sum(
        int(usage.get(key) or 0)
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    return Completion(
        text=text,
        finish_reason=_FINISH_REASONS.get(stop_reason, stop_reason),
        tokens=None,
        input_tokens=input_tokens,
        output_tokens=int(usage.get("output_tokens") or 0),
    )
