"""The real SDK providers against the fake teacher API over HTTP, and the mock."""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nex.collector.server.domain.teacher import ChatMessage, GenerationParams
from nex.collector.server.providers import errors
from nex.collector.server.providers.anthropic_provider import AnthropicProvider
from nex.collector.server.providers.base import (
    Completion,
    GenerationRequest,
    ProviderError,
    TeacherProvider,
)
from nex.collector.server.providers.mock_provider import MockProvider
from nex.collector.server.providers.openai_provider import OpenAIProvider
from nex.collector.server.providers.registry import ProviderSet, build_provider
from nex.collector.server.providers.retry import RetryPolicy
from tests.fakes.teacher_api import ANTHROPIC_PATH, OPENAI_PATH, FakeTeacherAPI, Scripted

KEY = "sk-proj-TESTKEY0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def request(
    user: str = "Explain entropy.",
    system: str | None = "Be brief.",
    model: str = "gpt-4o-mini",
    **params: Any,
) -> GenerationRequest:
    messages = [ChatMessage("system", system)] if system else []
    messages.append(ChatMessage("user", user))
    return GenerationRequest(model, messages, GenerationParams(**params))


@pytest.fixture
async def api() -> AsyncIterator[FakeTeacherAPI]:
    async with FakeTeacherAPI(api_key=KEY) as server:
        yield server


@pytest.fixture
async def openai_provider(api: FakeTeacherAPI) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(api_key=KEY, base_url=api.openai_base_url, timeout=5)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic_provider(api: FakeTeacherAPI) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(api_key=KEY, base_url=api.anthropic_base_url, timeout=5)
    yield provider
    await provider.aclose()


@pytest.fixture(params=["openai", "anthropic"])
def provider(
    request: pytest.FixtureRequest,
    openai_provider: OpenAIProvider,
    anthropic_provider: AnthropicProvider,
) -> TeacherProvider:
    return openai_provider if request.param == "openai" else anthropic_provider


async def failure(provider: TeacherProvider, req: GenerationRequest | None = None) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await provider.generate(req or request())
    return caught.value


# -- OpenAI ------------------------------------------------------------------


async def test_openai_stores_logprobs_exactly_as_sent(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    completion = await openai_provider.generate(request(top_logprobs=5))

    sent = api.exchanges[-1].response
    choice = sent["choices"][0]
    content = choice["logprobs"]["content"]
    assert completion.text == choice["message"]["content"]
    assert completion.finish_reason == choice["finish_reason"] == "stop"
    assert completion.input_tokens == sent["usage"]["prompt_tokens"]
    assert completion.output_tokens == sent["usage"]["completion_tokens"]
    tokens = completion.tokens
    assert tokens is not None
    assert tokens.tokens == [c["token"] for c in content]
    assert tokens.logprobs == [c["logprob"] for c in content]  # bit-exact floats
    assert tokens.top_counts == [5] * len(content)
    assert tokens.alternatives() == [
        [(t["token"], t["logprob"]) for t in c["top_logprobs"]] for c in content
    ]
    assert "".join(tokens.tokens) == completion.text
    assert any(not t.isascii() for t in tokens.top_tokens)  # unicode survives the round trip


async def test_openai_sends_only_the_params_that_are_set(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    completion = await openai_provider.generate(request())
    body = api.exchanges[-1].request
    assert body["logprobs"] is True
    assert set(body) == {"model", "messages", "logprobs"}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain entropy."},
    ]
    assert completion.tokens is not None
    assert set(completion.tokens.top_counts) == {0}

    await openai_provider.generate(
        request(temperature=0.0, max_tokens=64, top_p=0.9, seed=7, stop=("END",), top_logprobs=3)
    )
    body = api.exchanges[-1].request
    assert body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    assert body["top_p"] == 0.9
    assert body["seed"] == 7
    assert body["stop"] == ["END"]
    assert body["top_logprobs"] == 3


async def test_openai_max_tokens_cut_is_length(openai_provider: OpenAIProvider) -> None:
    completion = await openai_provider.generate(request(max_tokens=3))
    assert completion.finish_reason == "length"
    assert completion.output_tokens == 3
    assert completion.tokens is not None and len(completion.tokens) == 3


async def test_openai_without_logprobs_in_answer_gives_none(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    answer = {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    api.script(Scripted(200, body=answer))
    completion = await openai_provider.generate(request())
    assert completion == Completion("hi", "stop", None, 3, 1)


def _unsupported(param: str, hint: str = "") -> Scripted:
    message = f"Unsupported parameter: '{param}' is not supported with this model.{hint}"
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return Scripted(400, body={"error": error}, path=OPENAI_PATH)


async def test_openai_adapts_to_models_without_logprobs(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    api.script(_unsupported("logprobs"))
    completion = await openai_provider.generate(request())
    assert completion.tokens is None  # honest: the model gave none
    assert "logprobs" not in api.exchanges[-1].request
    await openai_provider.generate(request("again"))  # remembered for the model: one call
    assert api.requests_by_path[OPENAI_PATH] == 3
    assert "logprobs" not in api.exchanges[-1].request

    api.script(_unsupported("logprobs"))  # top_logprobs asked for explicitly: fail loudly
    error = await failure(openai_provider, request(model="o3", top_logprobs=3))
    assert (error.code, error.retryable) == (errors.BAD_REQUEST, False)


async def test_openai_adapts_to_max_completion_tokens(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    api.script(_unsupported("max_tokens", " Use 'max_completion_tokens' instead."))
    completion = await openai_provider.generate(request(max_tokens=4))
    assert completion.finish_reason == "length"
    assert api.exchanges[-1].request["max_completion_tokens"] == 4
    assert "max_tokens" not in api.exchanges[-1].request

    api.fail_next(400)  # any other 400 is final, without a second call
    error = await failure(openai_provider)
    assert error.code == errors.BAD_REQUEST
    assert api.requests_by_path[OPENAI_PATH] == 3


async def test_many_requests_in_flight(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    api.latency_s = 0.05
    results = await asyncio.gather(
        *(openai_provider.generate(request(f"question {i}")) for i in range(200))
    )
    assert len({r.text for r in results}) > 100
    assert api.requests_by_path[OPENAI_PATH] == 200
    assert api.requests_by_prompt["question 7"] == 1


# -- Anthropic ---------------------------------------------------------------


async def test_anthropic_has_no_logprobs(
    api: FakeTeacherAPI, anthropic_provider: AnthropicProvider
) -> None:
    assert anthropic_provider.supports_logprobs is False
    completion = await anthropic_provider.generate(request(top_logprobs=5, temperature=0.3))

    sent = api.exchanges[-1].response
    assert completion.tokens is None
    assert completion.text == sent["content"][0]["text"]
    assert completion.finish_reason == "stop"  # end_turn
    assert completion.input_tokens == sent["usage"]["input_tokens"]
    assert completion.output_tokens == sent["usage"]["output_tokens"]


async def test_anthropic_request_shape(
    api: FakeTeacherAPI, anthropic_provider: AnthropicProvider
) -> None:
    await anthropic_provider.generate(request(temperature=0.3, top_p=0.5, seed=1, stop=("END",)))
    body = api.exchanges[-1].request
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "Explain entropy."}]
    assert body["max_tokens"] == 1024  # required by Anthropic
    assert body["stop_sequences"] == ["END"]
    # API 2026-10-21 rejects sampling params; seed and top_logprobs do not exist there.
    assert not {"temperature", "top_p", "top_k", "seed", "top_logprobs"} & set(body)

    completion = await anthropic_provider.generate(request(system=None, max_tokens=2))
    body = api.exchanges[-1].request
    assert "system" not in body
    assert body["max_tokens"] == 2
    assert completion.finish_reason == "length"  # max_tokens


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_anthropic_stop_reasons(
    api: FakeTeacherAPI, anthropic_provider: AnthropicProvider, stop_reason: str, expected: str
) -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 3},
    }
    api.script(Scripted(200, body=answer))
    completion = await anthropic_provider.generate(request())
    assert completion == Completion("ab", expected, None, 8, 2)


# -- both: configuration -----------------------------------------------------


async def test_env_vars_are_honoured_when_args_are_none(
    api: FakeTeacherAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", api.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    providers = ProviderSet(timeout=5)
    try:
        await providers.get("openai").generate(request())
        await providers.get("anthropic").generate(request())
    finally:
        await providers.aclose()
    assert api.requests_by_path == {OPENAI_PATH: 1, ANTHROPIC_PATH: 1}


async def test_missing_openai_key_is_an_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_ADMIN_KEY", raising=False)
    with pytest.raises(ProviderError) as caught:
        OpenAIProvider(api_key=None, base_url="http://127.0.0.1:9/v1", timeout=1)
    assert (caught.value.code, caught.value.retryable) == (errors.AUTH, False)


async def test_registry() -> None:
    assert isinstance(build_provider("mock"), MockProvider)
    with pytest.raises(ValueError, match="unknown teacher provider"):
        build_provider("gemini")
    providers = ProviderSet(openai_api_key=KEY, anthropic_api_key=KEY, timeout=5)
    first = providers.get("openai")
    assert providers.get("openai") is first
    assert isinstance(first, OpenAIProvider)
    assert isinstance(providers.get("anthropic"), AnthropicProvider)
    with pytest.raises(ValueError):
        providers.get("nope")
    await providers.aclose()
    assert providers.get("openai") is not first  # closed ones are dropped
    await providers.aclose()


# -- both: failures ----------------------------------------------------------


async def test_rate_limit_is_retryable_with_retry_after(
    api: FakeTeacherAPI, provider: TeacherProvider
) -> None:
    api.fail_next(429, retry_after="1")
    error = await failure(provider)
    assert (error.code, error.retryable, error.retry_after) == (errors.RATE_LIMITED, True, 1.0)

    date = email.utils.formatdate(time.time() + 20, usegmt=True)
    api.fail_next(429, retry_after=date)
    error = await failure(provider)
    assert error.retry_after is not None and 15 <= error.retry_after <= 20

    api.script(Scripted(429, headers={"retry-after-ms": "1500"}))
    assert (await failure(provider)).retry_after == 1.5

    await provider.generate(request())  # the script is used up: OK again


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_are_retryable(
    api: FakeTeacherAPI, provider: TeacherProvider, status: int
) -> None:
    api.fail_next(status)
    error = await failure(provider)
    assert (error.code, error.retryable) == (errors.UNAVAILABLE, True)


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_bad_requests_are_final(
    api: FakeTeacherAPI, provider: TeacherProvider, status: int
) -> None:
    api.fail_next(status)
    error = await failure(provider)
    assert (error.code, error.retryable) == (errors.BAD_REQUEST, False)


@pytest.mark.parametrize("key", [KEY, "plain-test-key-with-no-prefix-42"])
async def test_wrong_key_is_final_and_never_leaks(
    api: FakeTeacherAPI, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.api_key = "the-key-the-server-expects"  # the fake echoes the key it got in full
    providers: list[TeacherProvider] = [
        OpenAIProvider(api_key=key, base_url=api.openai_base_url, timeout=5),
        AnthropicProvider(api_key=key, base_url=api.anthropic_base_url, timeout=5),
    ]
    for provider in providers:
        error = await failure(provider)
        assert (error.code, error.retryable) == (errors.AUTH, False)
        assert "Incorrect API key" in error.message
        for text in (error.message, str(error), repr(error), repr(error.__cause__)):
            assert key not in text
            assert key[:10] not in text
        await provider.aclose()
    assert api.exchanges[-1].status == 401


async def test_timeout_is_retryable(api: FakeTeacherAPI) -> None:
    for provider in (
        OpenAIProvider(api_key=KEY, base_url=api.openai_base_url, timeout=0.3),
        AnthropicProvider(api_key=KEY, base_url=api.anthropic_base_url, timeout=0.3),
    ):
        api.script(Scripted(delay_s=2.0))
        started = time.monotonic()
        error = await failure(provider)
        assert time.monotonic() - started < 1.5
        assert (error.code, error.retryable) == (errors.TIMEOUT, True)
        assert error.maybe_billed  # the teacher got the request and may bill the answer
        await provider.aclose()


async def test_unreachable_server_is_retryable_and_bills_nothing() -> None:
    for provider in (
        OpenAIProvider(api_key=KEY, base_url="http://127.0.0.1:9/v1", timeout=2),
        AnthropicProvider(api_key=KEY, base_url="http://127.0.0.1:9", timeout=2),
    ):
        error = await failure(provider)
        assert error.retryable
        assert error.code in (errors.CONNECTION, errors.TIMEOUT)
        assert not error.maybe_billed  # the request never left
        await provider.aclose()


async def test_garbled_answer_is_a_retryable_bad_response(
    api: FakeTeacherAPI, provider: TeacherProvider
) -> None:
    api.script(Scripted(200, body={"unexpected": True}))
    error = await failure(provider)
    assert (error.code, error.retryable) == (errors.BAD_RESPONSE, True)


async def test_retry_policy_gets_through_injected_failures(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    api.failure_rate = 0.3
    policy = RetryPolicy(max_attempts=10, base_delay=0.0, max_delay=0.0)

    async def with_retries(i: int) -> Completion:
        attempt = 1
        while True:
            try:
                return await openai_provider.generate(request(f"q{i}"))
            except ProviderError as error:
                if not policy.should_retry(attempt, error):
                    raise
                await asyncio.sleep(policy.delay(attempt, error))
                attempt += 1

    results = await asyncio.gather(*(with_retries(i) for i in range(40)))
    assert len(results) == 40
    assert api.requests_by_path[OPENAI_PATH] > 40  # some were failed and retried
    assert set(api.requests_by_prompt) == {f"q{i}" for i in range(40)}


async def test_fake_answers_are_deterministic(
    api: FakeTeacherAPI, openai_provider: OpenAIProvider
) -> None:
    first = await openai_provider.generate(request(top_logprobs=2))
    again = await openai_provider.generate(request(top_logprobs=2))
    other = await openai_provider.generate(request("Something else"))
    assert first == again
    assert first.text != other.text
    assert api.requests_by_prompt == {"Explain entropy.": 2, "Something else": 1}


# -- the fake in a thread and as a process (how benchmarks use it) ----------


async def test_fake_in_a_background_thread() -> None:
    api = FakeTeacherAPI(latency_s=0.01).start_in_thread()
    try:
        provider = OpenAIProvider(api_key=KEY, base_url=api.openai_base_url, timeout=5)
        completion = await provider.generate(request())
        await provider.aclose()
        assert completion.tokens is not None
        assert api.requests_by_path[OPENAI_PATH] == 1
    finally:
        api.stop_thread()


async def test_fake_as_a_process() -> None:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.fakes.teacher_api", "--port", "0", "--latency-ms", "1"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        assert line.startswith("FAKE_TEACHER_API_URL=http://127.0.0.1:")
        provider = AnthropicProvider(api_key=KEY, base_url=line.strip().split("=", 1)[1], timeout=5)
        completion = await provider.generate(request())
        await provider.aclose()
        assert completion.text
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


# -- mock --------------------------------------------------------------------


async def test_mock_is_deterministic() -> None:
    mock = MockProvider()
    first = await mock.generate(request())
    assert first == await MockProvider().generate(request())
    assert first != await mock.generate(request("Explain entropy!"))
    assert first != await mock.generate(request(temperature=0.5))
    assert first.text == "".join(first.tokens.tokens if first.tokens else [])
    # Asking for more alternatives changes the alternatives, not the text.
    assert (await mock.generate(request(top_logprobs=20))).text == first.text


@pytest.mark.parametrize("top_logprobs", [None, 0, 1, 3, 20])
async def test_mock_logprobs_are_valid(top_logprobs: int | None) -> None:
    completion = await MockProvider().generate(request(top_logprobs=top_logprobs))
    tokens = completion.tokens
    assert tokens is not None
    expected = 5 if top_logprobs is None else top_logprobs
    assert tokens.top_counts == [expected] * len(tokens)
    assert all(lp <= 0 for lp in tokens.logprobs + tokens.top_logprobs)
    for (token, logprob), alternatives in zip(
        zip(tokens.tokens, tokens.logprobs, strict=True), tokens.alternatives(), strict=True
    ):
        assert sum(math.exp(lp) for _, lp in alternatives) <= 1.0
        if alternatives:
            assert (token, logprob) in alternatives
            assert [lp for _, lp in alternatives] == sorted(
                (lp for _, lp in alternatives), reverse=True
            )
    assert completion.output_tokens == len(tokens)
    assert completion.input_tokens == len(["Be", "brief.", "Explain", "entropy."])
    assert completion.finish_reason == "stop"


async def test_mock_honours_max_tokens_and_stop() -> None:
    cut = await MockProvider().generate(request(max_tokens=4))
    assert (cut.finish_reason, cut.output_tokens) == ("length", 4)
    full = await MockProvider().generate(request(max_tokens=10_000))
    assert full.finish_reason == "stop"
    assert full.tokens is not None
    stop_word = full.tokens.tokens[3]
    stopped = await MockProvider().generate(request(max_tokens=10_000, stop=(stop_word,)))
    assert stopped.finish_reason == "stop"
    assert stop_word not in stopped.text


async def test_mock_latency() -> None:
    started = time.monotonic()
    await MockProvider(latency_s=0.05).generate(request())
    assert time.monotonic() - started >= 0.05
