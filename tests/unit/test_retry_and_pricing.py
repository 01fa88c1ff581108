"""Pure parts of the providers: retry policy, price table, error mapping."""

from __future__ import annotations

import email.utils
import random

import pytest

from nex.collector.server.providers import errors
from nex.collector.server.providers.base import ProviderError
from nex.collector.server.providers.pricing import cost_usd, price_for
from nex.collector.server.providers.retry import RetryPolicy


def _error(*, retryable: bool = True, retry_after: float | None = None) -> ProviderError:
    return ProviderError("X", "x", retryable=retryable, retry_after=retry_after)


# -- RetryPolicy -------------------------------------------------------------


def test_should_retry_counts_every_attempt() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(1, _error())
    assert policy.should_retry(2, _error())
    assert not policy.should_retry(3, _error())
    assert not policy.should_retry(1, _error(retryable=False))


def test_delay_is_full_jitter_under_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (10, 30.0)]:
        delays = [policy.delay(attempt, _error(), rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the range
        assert min(delays) < ceiling * 0.2


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    first = [policy.delay(a, _error(), rng=random.Random(1)) for a in range(1, 5)]
    again = [policy.delay(a, _error(), rng=random.Random(1)) for a in range(1, 5)]
    assert first == again


def test_delay_waits_at_least_retry_after_but_at_most_max_delay() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=10.0)
    rng = random.Random(3)
    assert all(policy.delay(1, _error(retry_after=2.0), rng=rng) >= 2.0 for _ in range(50))
    assert policy.delay(1, _error(retry_after=120.0), rng=rng) == 10.0
    assert policy.delay(1, _error(retry_after=0.0), rng=rng) <= 0.1


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)


# -- pricing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "expected"),
    [
        ("openai", "gpt-4o-mini", (0.15, 0.60)),
        ("openai", "gpt-4o-mini-2024-07-18", (0.15, 0.60)),
        ("openai", "gpt-4o-2024-08-06", (2.50, 10.00)),
        ("openai", "gpt-4o-2024-05-13", (5.00, 15.00)),  # its own, older price
        ("openai", "gpt-4.1-mini-2025-04-14", (0.40, 1.60)),
        ("openai", "gpt-3.5-turbo-0125", (0.50, 1.50)),
        ("openai", "o3-mini-2025-01-31", (1.10, 4.40)),
        ("anthropic", "claude-3-5-sonnet-20241022", (3.00, 15.00)),
        ("anthropic", "claude-3-5-sonnet-latest", (3.00, 15.00)),
        ("anthropic", "claude-sonnet-4-20250514", (3.00, 15.00)),
        ("anthropic", "claude-sonnet-4-0", (3.00, 15.00)),
        ("anthropic", "claude-opus-4-1-20250805", (15.00, 75.00)),
        ("anthropic", "claude-opus-4-5-20251101", (5.00, 25.00)),
        ("anthropic", "claude-haiku-4-5-20251001", (1.00, 5.00)),
    ],
)
def test_price_lookup(provider: str, model: str, expected: tuple[float, float]) -> None:
    price = price_for(provider, model)
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == expected


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-9-ultra"),
        ("openai", "gpt-4o-mini-search-preview"),  # another model, not a snapshot
        ("openai", "claude-sonnet-4"),  # wrong provider
        ("anthropic", "claude-opus-4-8"),  # not a snapshot of claude-opus-4
        ("mock", "mock-teacher"),
        ("nope", "gpt-4o"),
    ],
)
def test_unknown_models_cost_nothing(provider: str, model: str) -> None:
    assert price_for(provider, model) is None
    assert cost_usd(provider, model, 1_000_000, 1_000_000) == 0.0


def test_cost_usd() -> None:
    assert cost_usd("openai", "gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd("anthropic", "claude-sonnet-4-20250514", 2_000, 500) == pytest.approx(0.0135)
    assert cost_usd("openai", "gpt-4o", 0, 0) == 0.0


# -- error mapping -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (429, errors.RATE_LIMITED, True),
        (500, errors.UNAVAILABLE, True),
        (502, errors.UNAVAILABLE, True),
        (503, errors.UNAVAILABLE, True),
        (529, errors.UNAVAILABLE, True),
        (408, errors.TIMEOUT, True),
        (409, errors.UNAVAILABLE, True),
        (400, errors.BAD_REQUEST, False),
        (404, errors.BAD_REQUEST, False),
        (413, errors.BAD_REQUEST, False),
        (422, errors.BAD_REQUEST, False),
        (401, errors.AUTH, False),
        (403, errors.AUTH, False),
    ],
)
def test_status_mapping(status: int, code: str, retryable: bool) -> None:
    error = errors.from_status(status, "boom")
    assert (error.code, error.retryable) == (code, retryable)
    assert str(status) in error.message


def test_retry_after_is_kept_for_retryable_statuses() -> None:
    assert errors.from_status(429, "slow down", headers={"Retry-After": "3"}).retry_after == 3.0
    assert errors.from_status(529, "overloaded", headers={"retry-after": "1"}).retry_after == 1.0
    assert errors.from_status(401, "no", headers={"retry-after": "1"}).retry_after is None


def test_parse_retry_after() -> None:
    parse = errors.parse_retry_after
    assert parse({"Retry-After": "2"}) == 2.0
    assert parse({"retry-after": "1.5"}) == 1.5
    assert parse({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse({"retry-after": "-4"}) == 0.0
    assert parse({"retry-after": "soon"}) is None
    assert parse({"retry-after": "nan"}) is None
    assert parse({}) is None
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse({"Retry-After": date}, now=1_000_000) == pytest.approx(30.0)
    assert parse({"Retry-After": date}, now=1_000_100) == 0.0


@pytest.mark.parametrize(
    "secret", ["sk-proj-abcdefghijklmnop1234", "sk-ant-api03-ZZZZ_yyyy-1111", "plain-secret-42"]
)
def test_scrub_removes_keys(secret: str) -> None:
    text = f"Incorrect API key provided: {secret}. Authorization: Bearer {secret}"
    cleaned = errors.scrub(text, [secret, None, ""])
    assert secret not in cleaned
    assert secret[:12] not in cleaned
    assert "Incorrect API key provided" in cleaned


def test_scrub_catches_unconfigured_and_partial_keys() -> None:
    cleaned = errors.scrub("key sk-abc1***********wxyz and bearer abcdefghijkl0123 end")
    assert "sk-abc1" not in cleaned
    assert "abcdefghijkl0123" not in cleaned
    assert cleaned.endswith(" end")


def test_messages_are_scrubbed_and_bounded() -> None:
    error = errors.from_status(
        401, "bad key my-key-123456 " + "x" * 5000, secrets=["my-key-123456"]
    )
    assert "my-key-123456" not in error.message
    assert len(error.message) < 600


def test_unknown_failures_become_retryable_bad_responses() -> None:
    error = errors.to_provider_error(KeyError("choices"), secrets=["k"])
    assert error.code == errors.BAD_RESPONSE
    assert error.retryable
    passthrough = ProviderError("PROVIDER_X", "m", retryable=False)
    assert errors.to_provider_error(passthrough) is passthrough
