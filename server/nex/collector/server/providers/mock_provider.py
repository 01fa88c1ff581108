"""An offline, deterministic teacher for demos and tests: the same model,
messages and params always give the same text, logprobs and usage."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from dataclasses import astuple, replace

import orjson

from nex.collector.server.domain.limits import MAX_TOP_LOGPROBS
from nex.collector.server.domain.teacher import TokenLogprobs
from nex.collector.server.providers.base import Completion, GenerationRequest

DEFAULT_TOP_LOGPROBS = 5

VOCAB: tuple[str, ...] = (
    "the", "a", "model", "teacher", "student", "learns", "from", "signal", "data",
    "every", "token", "carries", "probability", "mass", "over", "words", "and", "so",
    "answers", "become", "clear", "when", "context", "is", "rich", "in", "examples",
    "distillation", "keeps", "what", "matters", "most", "it", "this", "we", "can",
    "see", "that", "because", "therefore", "simple", "ideas", "grow", "into", "good",
    "systems", "with", "care", "time", "practice",
)  # fmt: skip


class MockProvider:
    """`latency_s` adds a sleep per call (to simulate a slow teacher)."""

    name = "mock"
    supports_logprobs = True

    def __init__(self, latency_s: float = 0.0, *, name: str = "mock") -> None:
        self.latency_s = latency_s
        self.name = name

    async def generate(self, request: GenerationRequest) -> Completion:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        return mock_completion(request)

    async def aclose(self) -> None:
        return None


def mock_completion(request: GenerationRequest) -> Completion:
    """The deterministic answer to `request`."""
    params = request.params
    # top_logprobs stays out of the seed: asking for alternatives does not change the text.
    sampling = astuple(replace(params, top_logprobs=None))
    messages = [(m.role, m.content) for m in request.messages]
    seed = hashlib.sha256(orjson.dumps([request.model, messages, sampling])).digest()
    rng = random.Random(seed)
    top_k = DEFAULT_TOP_LOGPROBS if params.top_logprobs is None else params.top_logprobs
    top_k = max(0, min(top_k, MAX_TOP_LOGPROBS))

    natural = 12 + rng.randrange(40)
    limit = natural if params.max_tokens is None else min(natural, max(params.max_tokens, 0))
    positions: list[tuple[str, float, list[tuple[str, float]]]] = []
    text = ""
    finish = "length" if limit < natural else "stop"
    for i in range(limit):
        # The same draws whatever top_k is: it only trims the alternatives (and with
        # fewer than 2 the chosen token is always the likeliest, so it is among them).
        words = rng.sample(VOCAB, MAX_TOP_LOGPROBS)
        mass = 0.6 + 0.39 * rng.random()  # the alternatives' probabilities sum to this, < 1
        weights = sorted((rng.random() + 0.05 for _ in words), reverse=True)
        total = sum(weights)
        alternatives = [
            (("" if i == 0 else " ") + word, math.log(mass * weight / total))
            for word, weight in zip(words, weights, strict=True)
        ]
        second = rng.random() < 0.2  # sometimes sample the runner-up, as a real teacher does
        token, logprob = alternatives[1 if second and top_k > 1 else 0]
        if any(stop in text + token for stop in params.stop):
            finish = "stop"
            break
        text += token
        positions.append((token, logprob, alternatives[:top_k]))

    return Completion(
        text=text,
        finish_reason=finish,
        tokens=TokenLogprobs.from_positions(positions),
        input_tokens=sum(len(m.content.split()) for m in request.messages),
        output_tokens=len(positions),
    )
