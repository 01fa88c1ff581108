"""OpenAI chat completions (and any server speaking that API) as a teacher.

Speed matters (hundreds of calls in flight). The SDK's client still does the
auth, base URL, headers, transport (aiohttp) and error mapping, but the call
goes through its generic `post()` with a body that orjson serialises: the typed
`chat.completions.create()` spends ~40% of its CPU walking the params through
its TypedDict transform and then builds pydantic models for every token and
alternative. The answer is parsed by orjson straight into the columnar
TokenLogprobs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx2
import openai
import orjson

from nex.collector.server.domain.teacher import TokenLogprobs
from nex.collector.server.providers.base import Completion, GenerationRequest, rate_headers
from nex.collector.server.providers.errors import provider_errors

DEFAULT_MAX_CONNECTIONS = 512

# Request adaptations learnt per model from its 400 answers (see `_quirk`).
NO_LOGPROBS = "no_logprobs"
MAX_COMPLETION_TOKENS = "max_completion_tokens"

# What `chat.completions.create()` sets: bearer auth from the client's key.
_REQUEST_OPTIONS: openai.RequestOptions = {
    "headers": {"Content-Type": "application/json"},
    "security": {"bearer_auth": True},
}


class OpenAIProvider:
    """`api_key` / `base_url` default to OPENAI_API_KEY / OPENAI_BASE_URL.
    Logprobs are always requested, `top_logprobs` alternatives when set; a
    model that refuses `logprobs` or `max_tokens` (o-series, gpt-5) gets one
    adapted retry, and the adaptation is kept for that model."""

    name = "openai"
    supports_logprobs = True

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        name: str = "openai",
    ) -> None:
        self.name = name
        self._secrets: tuple[str | None, ...] = (api_key,)
        limits = httpx2.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        with provider_errors(self._secrets):  # no key anywhere: PROVIDER_AUTH
            self._client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=base_url,
                timeout=timeout,
                max_retries=0,  # retries happen in RetryPolicy, attempts counted once
                http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=limits),
            )
        self._secrets = (api_key, self._client.api_key)
        self._quirks: dict[str, frozenset[str]] = {}

    async def generate(self, request: GenerationRequest) -> Completion:
        quirks = self._quirks.get(request.model, frozenset())
        with provider_errors(self._secrets):
            while True:
                body = request_body(request, quirks)
                try:
                    response = await self._client.post(
                        "/chat/completions",
                        cast_to=httpx2.Response,
                        content=orjson.dumps(body),
                        options=_REQUEST_OPTIONS,
                    )
                except openai.BadRequestError as exc:
                    quirk = _quirk(exc, body)
                    if quirk is None or quirk in quirks:
                        raise
                    quirks = self._quirks[request.model] = quirks | {quirk}
                    continue
                completion = parse_chat_completion(orjson.loads(response.content))
                headers = rate_headers(response.headers)
                if headers is None:
                    return completion
                return dataclasses.replace(completion, rate_headers=headers)

    async def aclose(self) -> None:
        await self._client.close()


def request_body(
    request: GenerationRequest, quirks: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The chat-completions JSON body: logprobs (unless the model refused them),
    the other params only when set."""
    params = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if NO_LOGPROBS not in quirks:
        body["logprobs"] = True
    if params.top_logprobs:
        body["top_logprobs"] = params.top_logprobs
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.max_tokens is not None:
        body[MAX_COMPLETION_TOKENS if MAX_COMPLETION_TOKENS in quirks else "max_tokens"] = (
            params.max_tokens
        )
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _quirk(exc: openai.BadRequestError, body: dict[str, Any]) -> str | None:
    """What to change when a model refuses a request we can adapt: reasoning
    models reject `logprobs` (dropped only when no `top_logprobs` were asked
    for; tokens are then None) and want `max_completion_tokens`."""
    param = exc.param or ""
    text = exc.message.lower()
    if "max_tokens" in body and "max_completion_tokens" in text:
        return MAX_COMPLETION_TOKENS
    refused = param == "logprobs" or ("logprobs" in text and "support" in text)
    if refused and body.get("logprobs") and "top_logprobs" not in body:
        return NO_LOGPROBS
    return None


def parse_chat_completion(body: Any) -> Completion:
    """A Completion from a chat-completions JSON body (first choice)."""
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    return Completion(
        text=(choice.get("message") or {}).get("content") or "",
        finish_reason=choice.get("finish_reason") or "unknown",
        tokens=_token_logprobs(choice.get("logprobs")),
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )


def _token_logprobs(logprobs: Any) -> TokenLogprobs | None:
    content = logprobs.get("content") if logprobs else None
    if content is None:
        return None
    tokens: list[str] = []
    values: list[float] = []
    counts: list[int] = []
    top_tokens: list[str] = []
    top_values: list[float] = []
    for item in content:
        tokens.append(item["token"])
        values.append(float(item["logprob"]))
        alternatives = item.get("top_logprobs") or ()
        counts.append(len(alternatives))
        for alternative in alternatives:
            top_tokens.append(alternative["token"])
            top_values.append(float(alternative["logprob"]))
    return TokenLogprobs(tokens, values, counts, top_tokens, top_values)
