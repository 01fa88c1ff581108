"""OpenAI chat completions (and any server speaking that API) as a teacher.

Speed: the SDK's raw-response mode hands back the body unparsed, and orjson
turns it straight into the columnar TokenLogprobs; the SDK's pydantic models
(a few hundred objects per completion with top logprobs) are never built.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import httpx2
import openai
import orjson
from nex.collector.server.domain.teacher import TokenLogprobs
from nex.collector.server.providers.base import Completion, GenerationRequest
from nex.collector.server.providers.errors import provider_errors
from openai.types.chat import ChatCompletionMessageParam

DEFAULT_MAX_CONNECTIONS = 512

_T = TypeVar("_T")


class OpenAIProvider:
    """`api_key` / `base_url` default to OPENAI_API_KEY / OPENAI_BASE_URL.
    Logprobs are always requested; `top_logprobs` alternatives when set."""

    name = "openai"
    supports_logprobs = True

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
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

    async def generate(self, request: GenerationRequest) -> Completion:
        params = request.params
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        with provider_errors(self._secrets):
            raw = await self._client.chat.completions.with_raw_response.create(
                model=request.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                logprobs=True,
                top_logprobs=params.top_logprobs if params.top_logprobs else openai.omit,
                temperature=_given(params.temperature),
                max_tokens=_given(params.max_tokens),
                top_p=_given(params.top_p),
                seed=_given(params.seed),
                stop=list(params.stop) if params.stop else openai.omit,
            )
            return parse_chat_completion(orjson.loads(raw.content))

    async def aclose(self) -> None:
        await self._client.close()


def _given(value: _T | None) -> _T | openai.Omit:
    return openai.omit if value is None else value


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
