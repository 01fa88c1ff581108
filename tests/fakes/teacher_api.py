"""A real local HTTP server that speaks the OpenAI chat-completions and the
Anthropic Messages APIs, for tests and benchmarks.

Answers are deterministic functions of the request (model + messages), and
faults are injected at runtime: fixed latency, a seeded failure rate, and a
queue of scripted responses. Counters record what was received per path and
per prompt, so tests can assert that a prompt was (not) sent again.

In a test::

    async with FakeTeacherAPI() as api:
        provider = OpenAIProvider(api_key="k", base_url=api.openai_base_url, timeout=5)

For a benchmark (another process)::

    python -m tests.fakes.teacher_api --port 8999 --latency-ms 200

Limits are enforced the way OpenAI does it: `requests_per_min` and
`tokens_per_min` are granted per one-second window (a 60th each), a request
counts its prompt tokens plus its max_tokens when it arrives, and one past the
limit gets a 429 with `retry-after-ms`, `retry-after` and the rate-limit
headers (`x-ratelimit-*`, or `anthropic-ratelimit-*` on the Messages route),
which every answer carries while a limit is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import random
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import orjson
from aiohttp import web

from tests.fakes.provider_batches import ProviderBatches

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
STATS_PATH = "/stats"  # the fake's own counts, for benchmarks in another process

DEFAULT_MAX_TOKENS = 1024
# The OpenAI API's own cap, which the fake answers by (the collector's is
# domain/limits.py MAX_TOP_LOGPROBS; the two happen to be equal).
OPENAI_MAX_TOP_LOGPROBS = 20

# A few non-ASCII words so that `bytes` and unicode round trips are exercised.
VOCAB: tuple[str, ...] = (
    "the", "model", "answer", "is", "a", "distilled", "teacher", "student", "token",
    "probability", "context", "of", "and", "to", "in", "data", "batch", "run", "we",
    "learn", "from", "signal", "noise", "every", "step", "café", "naïve", "über",
    "résumé", "日本", "→", "value", "loss", "gradient", "sample", "output", "input",
    "prompt", "reason", "because", "therefore", "so", "it", "that", "this", "with",
)  # fmt: skip

# Strides coprime with len(VOCAB) (46), so the 20 alternatives are distinct words.
_STEPS = (1, 3, 5, 7, 9, 11, 13, 15, 17, 19)

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class Scripted:
    """One scripted answer. `body=None` means the normal answer for a 2xx and
    the API's own error shape otherwise; `delay_s` is added to the latency
    (a long one makes the client time out)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay_s: float = 0.0
    path: str | None = None  # only for requests to this path; None: any path


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the fake received and what it answered."""

    path: str
    request: dict[str, Any]
    status: int
    response: Any


@dataclass(frozen=True, slots=True)
class Position:
    token: str
    logprob: float
    top: list[tuple[str, float]]


def prompt_key(messages: list[dict[str, Any]]) -> str:
    """The counters' key for a request: the text of its last user message."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def generate(
    model: str,
    messages: list[dict[str, Any]],
    system: str,
    max_tokens: int,
    top_k: int,
    length: int | None = None,
) -> tuple[list[Position], bool]:
    """Deterministic output for a prompt: its positions and whether it was cut
    by `max_tokens`. Each position has the `top_k` likeliest of 20 alternatives
    (geometric probabilities summing below 1); the chosen token is the first or
    (as real sampling does) sometimes the second likeliest. The draws do not
    depend on `top_k`, so neither does the text."""
    seed_bytes = orjson.dumps([model, system, messages], option=orjson.OPT_SORT_KEYS)
    rng = random.Random(hashlib.sha256(seed_bytes).digest())
    natural = 8 + rng.randrange(25)
    if length is not None:
        natural = length
    count = min(natural, max(max_tokens, 0))
    size = len(VOCAB)
    positions: list[Position] = []
    for i in range(count):
        start = rng.randrange(size)
        step = _STEPS[rng.randrange(len(_STEPS))]
        ratio = 0.2 + 0.7 * rng.random()
        mass = 0.55 + 0.44 * rng.random()
        chosen = 1 if rng.random() < 0.2 else 0
        # p_j = mass * (1 - r) r^j / (1 - r^20): decreasing, summing to `mass` over all 20.
        head = math.log(mass * (1 - ratio) / (1 - ratio**OPENAI_MAX_TOP_LOGPROBS))
        log_ratio = math.log(ratio)
        prefix = "" if i == 0 else " "
        top = [
            (prefix + VOCAB[(start + j * step) % size], head + j * log_ratio)
            for j in range(max(top_k, chosen + 1))
        ]
        token, logprob = top[chosen]
        positions.append(Position(token, logprob, top[:top_k]))
    return positions, natural > count


@functools.cache
def _utf8(token: str) -> list[int]:
    return list(token.encode())


def openai_completion(request: dict[str, Any], length: int | None = None) -> dict[str, Any]:
    """The chat-completions answer for a request body, in OpenAI's exact shape."""
    model = str(request.get("model", ""))
    messages = list(request.get("messages") or [])
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens")
    want_logprobs = bool(request.get("logprobs"))
    top_k = (
        min(int(request.get("top_logprobs") or 0), OPENAI_MAX_TOP_LOGPROBS) if want_logprobs else 0
    )
    positions, cut = generate(model, messages, "", max_tokens or DEFAULT_MAX_TOKENS, top_k, length)
    logprobs = None
    if want_logprobs:
        logprobs = {
            "content": [
                {
                    "token": p.token,
                    "logprob": p.logprob,
                    "bytes": _utf8(p.token),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": _utf8(t)} for t, lp in p.top
                    ],
                }
                for p in positions
            ],
            "refusal": None,
        }
    prompt_tokens = openai_prompt_tokens(messages)
    digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {
        "id": f"chatcmpl-{digest[:24]}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(p.token for p in positions),
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": logprobs,
                "finish_reason": "length" if cut else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(positions),
            "total_tokens": prompt_tokens + len(positions),
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def openai_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(_text_of(m.get("content")).split()) + 3 for m in messages)


def request_tokens(path: str, body: dict[str, Any]) -> int:
    """What a request counts against tokens/min when it arrives: its prompt
    tokens plus the most it may generate (as OpenAI counts it)."""
    messages = list(body.get("messages") or [])
    prompt = openai_prompt_tokens(messages) + len(_text_of(body.get("system")).split())
    most = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    return prompt + int(most)


@dataclass
class Window:
    """Requests and tokens granted in the current one-second window."""

    second: int = 0
    requests: int = 0
    tokens: int = 0


def anthropic_message(request: dict[str, Any], length: int | None = None) -> dict[str, Any]:
    """The Messages answer for a request body, in Anthropic's exact shape."""
    model = str(request.get("model", ""))
    messages = list(request.get("messages") or [])
    system = _text_of(request.get("system"))
    max_tokens = int(request.get("max_tokens") or 0)
    positions, cut = generate(model, messages, system, max_tokens, 0, length)
    input_tokens = len(system.split()) + sum(
        len(_text_of(m.get("content")).split()) + 3 for m in messages
    )
    digest = hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return {
        "id": f"msg_{digest[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "".join(p.token for p in positions)}],
        "stop_reason": "max_tokens" if cut else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": len(positions),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def error_body(path: str, status: int, message: str) -> dict[str, Any]:
    """An error body in the shape of the API that `path` belongs to."""
    if path == ANTHROPIC_PATH:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class FakeTeacherAPI:
    """The fake server. Every knob (`latency_s`, `failure_rate`,
    `failure_statuses`, `api_key`) may be changed while it runs."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        failure_rate: float = 0.0,
        failure_statuses: tuple[int, ...] = (500, 529),
        seed: int = 0,
        api_key: str | None = None,
        record: bool = True,
        requests_per_min: int | None = None,
        tokens_per_min: int | None = None,
        answer_tokens: int | None = None,
    ) -> None:
        self.host = host
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.answer_tokens = answer_tokens
        self.served = 0
        self.rate_limited = 0
        self.tokens_served = 0
        self._window = Window()
        self.port = port
        self.latency_s = latency_s
        self.failure_rate = failure_rate
        self.failure_statuses = failure_statuses
        self.api_key = api_key
        self.record = record
        self.requests_by_path: Counter[str] = Counter()
        self.requests_by_prompt: Counter[str] = Counter()
        self.exchanges: list[Exchange] = []
        # Money billed, as a provider counts it: model -> (USD per 1M input,
        # per 1M output tokens) set by a test; each 200 answer bills its usage.
        self.prices: dict[str, tuple[float, float]] = {}
        self.spent_usd = 0.0
        self._seed = seed
        self._rng = random.Random(seed)
        self._failures = 0
        self._script: deque[Scripted] = deque()
        # The answer gate (hold_answers / release_answers); touched on the fake's loop only.
        self._holding = False
        self._allowance = 0
        self._held: deque[asyncio.Future[None]] = deque()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The Batch APIs (OpenAI Files + Batches, Anthropic Message Batches).
        self.batches = ProviderBatches(
            self._batch_answer,
            lambda request: self.api_key is None or _presented_key(request) == self.api_key,
        )

    def _batch_answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """One request inside a batch job: the same answer as online (and billed)."""
        if path == ANTHROPIC_PATH:
            if not body.get("max_tokens"):
                return 400, error_body(path, 400, "max_tokens: Field required")
            answer = anthropic_message(body, self.answer_tokens)
        else:
            answer = openai_completion(body, self.answer_tokens)
        self.requests_by_prompt[prompt_key(list(body.get("messages") or []))] += 1
        self._bill(str(body.get("model", "")), answer)
        return 200, answer

    # -- addresses -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What to give `AsyncOpenAI(base_url=…)` (or OPENAI_BASE_URL)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """What to give `AsyncAnthropic(base_url=…)` (or ANTHROPIC_BASE_URL)."""
        return self.base_url

    # -- fault injection -----------------------------------------------------

    def script(self, *responses: Scripted) -> None:
        """Queues answers that the next matching requests get, in order."""
        self._script.extend(responses)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: str | None = None,
        path: str | None = None,
    ) -> None:
        """The next `times` requests (to `path`, or any) answer `status`,
        with a `Retry-After` header when given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.script(*(Scripted(status, headers=headers, path=path) for _ in range(times)))

    def hold_answers(self) -> None:
        """From now on every answer waits, after its latency, until
        `release_answers` lets it go: the test decides when answers come."""
        self._on_loop(self._hold)

    def release_answers(self, count: int | None = None) -> None:
        """Lets `count` answers go: held ones first, then the next ones to
        arrive. None: all of them, and stops holding."""
        self._on_loop(lambda: self._release(count))

    @property
    def held_answers(self) -> int:
        """Requests received and waiting at the gate now."""
        return len(self._held)

    def _on_loop(self, action: Callable[[], None]) -> None:
        """Runs `action` on the fake's loop (it runs in a thread of its own, or
        on the caller's), and returns once it has run."""
        loop = self._loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            action()
            return
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(10):
            raise TimeoutError("the fake teacher API's loop did not answer")

    def _hold(self) -> None:
        self._holding = True

    def _release(self, count: int | None) -> None:
        if count is None:
            self._holding, self._allowance = False, 0
            count = len(self._held)
        while count > 0 and self._held:
            waiter = self._held.popleft()
            if not waiter.done():
                waiter.set_result(None)
            count -= 1
        self._allowance += count

    async def _pass_gate(self) -> None:
        if not self._holding:
            return
        if self._allowance > 0:
            self._allowance -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._held.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):  # released: no longer there
                self._held.remove(waiter)

    def reset(self) -> None:
        """Clears counters, recorded exchanges, the script and the failure RNG,
        and opens the answer gate."""
        self._on_loop(lambda: self._release(None))
        self.requests_by_path.clear()
        self.requests_by_prompt.clear()
        self.exchanges.clear()
        self.prices = {}
        self.spent_usd = 0.0
        self._script.clear()
        self._rng = random.Random(self._seed)
        self._failures = 0
        self.served = 0
        self.rate_limited = 0
        self.tokens_served = 0
        self._window = Window()

    def limit(
        self,
        requests_per_min: int | None = None,
        tokens_per_min: int | None = None,
        *,
        answer_tokens: int | None = None,
    ) -> None:
        """Enforces these limits from now on (None: unlimited)."""
        self.requests_per_min = requests_per_min
        self.tokens_per_min = tokens_per_min
        self.answer_tokens = answer_tokens
        self._window = Window()

    @property
    def total_requests(self) -> int:
        return sum(self.requests_by_path.values())

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> Self:
        app = web.Application(client_max_size=300 * 1024 * 1024)  # batch input files
        self.batches.routes(app)
        app.router.add_post(OPENAI_PATH, self._handle)
        app.router.add_post(ANTHROPIC_PATH, self._handle)
        app.router.add_get(STATS_PATH, self._stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=2048, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> Self:
        """Serves from a background thread with its own event loop (for
        benchmarks and synchronous code); stop it with `stop_thread()`."""
        started = threading.Event()
        failed: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # e.g. the port is taken: re-raised by the caller
                failed.append(exc)
                loop.close()
                return
            finally:
                started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fake-teacher-api", daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise TimeoutError("the fake teacher API did not start")
        if failed:
            self._thread, self._loop = None, None
            raise failed[0]
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
            self._loop = None

    # -- the handler ---------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._json(path, 400, error_body(path, 400, "invalid JSON body"), {})
        if not isinstance(body, dict):
            return self._json(path, 400, error_body(path, 400, "body must be an object"), {})
        self.requests_by_path[path] += 1
        self.requests_by_prompt[prompt_key(list(body.get("messages") or []))] += 1

        limited = self._admit(path, body)
        if limited is not None:
            return limited
        scripted = self._next_scripted(path)
        delay = self.latency_s + (scripted.delay_s if scripted else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        await self._pass_gate()

        status, headers, answer = self._answer(path, request, body, scripted)
        if status == 200:
            self._bill(str(body.get("model", "")), answer)
            self.served += 1
            usage = answer.get("usage") or {}
            self.tokens_served += sum(
                int(usage.get(k) or 0)
                for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
            )
            headers = {**self._limit_headers(path), **headers}
        if self.record:
            self.exchanges.append(Exchange(path, body, status, answer))
        return self._json(path, status, answer, headers)

    def _bill(self, model: str, answer: Any) -> None:
        price = self.prices.get(model)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        if price is None or not isinstance(usage, dict):
            return
        tokens_in = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
        tokens_out = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
        self.spent_usd += (tokens_in * price[0] + tokens_out * price[1]) / 1e6

    # -- limits ---------------------------------------------------------------

    def _capacity(self) -> tuple[int | None, int | None]:
        rpm, tpm = self.requests_per_min, self.tokens_per_min
        return (
            max(rpm // 60, 1) if rpm else None,
            max(tpm // 60, 1) if tpm else None,
        )

    def _admit(self, path: str, body: dict[str, Any]) -> web.Response | None:
        """Counts the request in this second's window; a 429 when it does not fit."""
        max_requests, max_tokens = self._capacity()
        if max_requests is None and max_tokens is None:
            return None
        now = time.time()
        second = int(now)
        if self._window.second != second:
            self._window = Window(second)
        w = self._window
        cost = request_tokens(path, body)
        over_requests = max_requests is not None and w.requests >= max_requests
        over_tokens = max_tokens is not None and w.tokens > 0 and w.tokens + cost > max_tokens
        if not (over_requests or over_tokens):
            w.requests += 1
            w.tokens += cost
            return None
        self.rate_limited += 1
        wait_ms = max(int((second + 1 - now) * 1000), 1)
        headers = {
            **self._limit_headers(path),
            "retry-after-ms": str(wait_ms),
            "retry-after": str(math.ceil(wait_ms / 1000)),
        }
        what = "requests" if over_requests else "tokens"
        answer = error_body(path, 429, f"Rate limit reached for {what} per min. Please try again.")
        if self.record:
            self.exchanges.append(Exchange(path, body, 429, answer))
        return self._json(path, 429, answer, headers)

    def _limit_headers(self, path: str) -> dict[str, str]:
        max_requests, max_tokens = self._capacity()
        if max_requests is None and max_tokens is None:
            return {}
        now = time.time()
        w = self._window if self._window.second == int(now) else Window(int(now))
        reset_s = int(now) + 1 - now
        headers: dict[str, str] = {}
        if path == ANTHROPIC_PATH:
            reset = datetime.fromtimestamp(int(now) + 1, UTC).isoformat().replace("+00:00", "Z")
            if max_requests is not None:
                headers["anthropic-ratelimit-requests-limit"] = str(self.requests_per_min)
                headers["anthropic-ratelimit-requests-remaining"] = str(
                    max(max_requests - w.requests, 0)
                )
                headers["anthropic-ratelimit-requests-reset"] = reset
            if max_tokens is not None:
                headers["anthropic-ratelimit-tokens-limit"] = str(self.tokens_per_min)
                headers["anthropic-ratelimit-tokens-remaining"] = str(max(max_tokens - w.tokens, 0))
                headers["anthropic-ratelimit-tokens-reset"] = reset
            return headers
        reset = f"{max(int(reset_s * 1000), 1)}ms"
        if max_requests is not None:
            headers["x-ratelimit-limit-requests"] = str(self.requests_per_min)
            headers["x-ratelimit-remaining-requests"] = str(max(max_requests - w.requests, 0))
            headers["x-ratelimit-reset-requests"] = reset
        if max_tokens is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tokens_per_min)
            headers["x-ratelimit-remaining-tokens"] = str(max(max_tokens - w.tokens, 0))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers

    async def _stats(self, request: web.Request) -> web.Response:
        stats = {
            "served": self.served,
            "rate_limited": self.rate_limited,
            "tokens_served": self.tokens_served,
            "requests": self.total_requests,
        }
        return web.Response(body=orjson.dumps(stats), content_type="application/json")

    def _next_scripted(self, path: str) -> Scripted | None:
        for i, item in enumerate(self._script):
            if item.path is None or item.path == path:
                del self._script[i]
                return item
        return None

    def _answer(
        self, path: str, request: web.Request, body: dict[str, Any], scripted: Scripted | None
    ) -> tuple[int, dict[str, str], Any]:
        if scripted is not None:
            if scripted.body is not None:
                return scripted.status, scripted.headers, scripted.body
            if scripted.status >= 300:
                message = f"scripted failure {scripted.status}"
                return scripted.status, scripted.headers, error_body(path, scripted.status, message)
        elif self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            status = self.failure_statuses[self._failures % len(self.failure_statuses)]
            self._failures += 1
            return status, {}, error_body(path, status, "injected failure")

        presented = _presented_key(request)
        if self.api_key is not None and presented != self.api_key:
            # Real APIs echo (part of) the key they got; a full echo is the worst case.
            message = f"Incorrect API key provided: {presented}."
            return 401, {}, error_body(path, 401, message)

        headers = scripted.headers if scripted is not None else {}
        if path == ANTHROPIC_PATH:
            if not body.get("max_tokens"):
                return 400, {}, error_body(path, 400, "max_tokens: Field required")
            return 200, headers, anthropic_message(body, self.answer_tokens)
        return 200, headers, openai_completion(body, self.answer_tokens)

    @staticmethod
    def _json(path: str, status: int, answer: Any, headers: dict[str, str]) -> web.Response:
        return web.Response(
            body=orjson.dumps(answer),
            status=status,
            headers=headers,
            content_type="application/json",
        )


def _presented_key(request: web.Request) -> str:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[len("Bearer ") :]
    return request.headers.get("x-api-key", "")


async def _serve_forever(api: FakeTeacherAPI) -> None:
    await api.start()
    print(f"FAKE_TEACHER_API_URL={api.base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await api.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI + Anthropic teacher API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="reject other keys with 401")
    parser.add_argument("--rpm", type=int, default=None, help="requests/min, per-second windows")
    parser.add_argument("--tpm", type=int, default=None, help="tokens/min, per-second windows")
    parser.add_argument("--answer-tokens", type=int, default=None, help="tokens per answer")
    args = parser.parse_args(argv)
    api = FakeTeacherAPI(
        host=args.host,
        port=args.port,
        latency_s=args.latency_ms / 1000,
        failure_rate=args.failure_rate,
        seed=args.seed,
        api_key=args.api_key,
        record=False,
        requests_per_min=args.rpm,
        tokens_per_min=args.tpm,
        answer_tokens=args.answer_tokens,
    )
    asyncio.run(_serve_forever(api))


if __name__ == "__main__":
    main()
