"""The one table of teacher prices, in USD per 1M input / output tokens.

List prices of the standard tier (no batch, cache or long-context rates), as
the vendors publish them; a model missing here costs 0.0 rather than a guess.
A snapshot name ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-20250514",
"claude-3-5-sonnet-latest") takes the price of the name without its snapshot
suffix; other suffixes ("-mini", "-codex") are other models, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from nex.collector.server.domain.teachers import TeacherEndpoint, TeacherKind

# "-latest", "-chat-latest", "-0" (Anthropic aliases), "-0613", "-2024-07-18", "-20250514".
_SNAPSHOT = re.compile(r"-(?:latest|chat-latest|0|\d{4}|\d{4}-\d{2}-\d{2}|\d{8})$")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    input_per_mtok: float
    output_per_mtok: float


_P = ModelPrice

PRICES: dict[str, dict[str, ModelPrice]] = {
    "openai": {
        "gpt-3.5-turbo": _P(0.50, 1.50),
        "gpt-4": _P(30.00, 60.00),
        "gpt-4-32k": _P(60.00, 120.00),
        "gpt-4-turbo": _P(10.00, 30.00),
        "gpt-4-turbo-preview": _P(10.00, 30.00),
        "gpt-4-0125-preview": _P(10.00, 30.00),
        "gpt-4-1106-preview": _P(10.00, 30.00),
        "gpt-4o": _P(2.50, 10.00),
        "gpt-4o-2024-05-13": _P(5.00, 15.00),
        "gpt-4o-mini": _P(0.15, 0.60),
        "chatgpt-4o-latest": _P(5.00, 15.00),
        "gpt-4.1": _P(2.00, 8.00),
        "gpt-4.1-mini": _P(0.40, 1.60),
        "gpt-4.1-nano": _P(0.10, 0.40),
        "gpt-5": _P(1.25, 10.00),
        "gpt-5-mini": _P(0.25, 2.00),
        "gpt-5-nano": _P(0.05, 0.40),
        "gpt-5.1": _P(1.25, 10.00),
        "o1": _P(15.00, 60.00),
        "o1-mini": _P(1.10, 4.40),
        "o3": _P(2.00, 8.00),
        "o3-mini": _P(1.10, 4.40),
        "o4-mini": _P(1.10, 4.40),
    },
    "anthropic": {
        "claude-3-haiku": _P(0.25, 1.25),
        "claude-3-opus": _P(15.00, 75.00),
        "claude-3-5-haiku": _P(0.80, 4.00),
        "claude-3-5-sonnet": _P(3.00, 15.00),
        "claude-3-7-sonnet": _P(3.00, 15.00),
        "claude-sonnet-4": _P(3.00, 15.00),
        "claude-opus-4": _P(15.00, 75.00),
        "claude-opus-4-1": _P(15.00, 75.00),
        "claude-opus-4-5": _P(5.00, 25.00),
        "claude-opus-4-6": _P(5.00, 25.00),
        "claude-opus-4-7": _P(5.00, 25.00),
        "claude-haiku-4-5": _P(1.00, 5.00),
    },
    "mock": {},
}


# Teacher name -> (its own prices from TEACHERS_FILE, the built-in table it
# falls back to). Set once per process by `use_teachers` (bootstrap).
_TEACHERS: dict[str, tuple[dict[str, ModelPrice], str | None]] = {}


def use_teachers(teachers: Iterable[TeacherEndpoint]) -> None:
    """Makes `price_for` answer for the deployment's named teachers: a price
    in the teachers file wins; an `openai` / `anthropic` kind falls back to
    the vendor's list price; an `openai-compatible` one has no other price."""
    _TEACHERS.clear()
    for t in teachers:
        fallback = t.kind.value if t.kind in (TeacherKind.OPENAI, TeacherKind.ANTHROPIC) else None
        own = {m: ModelPrice(p.input_per_mtok, p.output_per_mtok) for m, p in t.prices.items()}
        _TEACHERS[t.name] = (own, fallback)


def price_for(provider: str, model: str) -> ModelPrice | None:
    """The price of `model` at teacher `provider`: its own entry, else the
    entry of its name without a snapshot suffix."""
    teacher = _TEACHERS.get(provider)
    if teacher is not None:
        own, fallback = teacher
        price = own.get(model) or own.get(_SNAPSHOT.sub("", model))
        if price is not None or fallback is None:
            return price
        provider = fallback
    table = PRICES.get(provider)
    if not table:
        return None
    price = table.get(model)
    if price is None:
        price = table.get(_SNAPSHOT.sub("", model))
    return price


def cost_usd(provider: str, model: str, input_tokens: int, output_tokens: int) -> float:
    """What a call cost in USD; 0.0 for a mock or unknown model."""
    price = price_for(provider, model)
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6
