"""Reading providers' rate-limit headers, and prices from the teachers file."""

from __future__ import annotations

import pytest

from nex.collector.server.domain.ratelimits import parse_duration, parse_rate_headers
from nex.collector.server.domain.teachers import Price, TeacherEndpoint, TeacherKind
from nex.collector.server.providers import pricing

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "-1"])
def test_unreadable_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_openai_headers() -> None:
    snap = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "1200",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-remaining-tokens": "149000",
            "x-ratelimit-reset-requests": "50ms",
            "x-ratelimit-reset-tokens": "6m0s",
            "retry-after-ms": "250",
        },
        now=NOW,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.limit_tokens) == (1200, 150000)
    assert snap.reset_requests_s == pytest.approx(0.05)
    assert snap.reset_tokens_s == pytest.approx(360)
    assert snap.retry_after_s == pytest.approx(0.25)
    assert snap.block_s == pytest.approx(0.25)


def test_anthropic_headers() -> None:
    snap = parse_rate_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:02Z",
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:02Z",
            "retry-after": "3",
        },
        now=1_800_000_000.0,
    )
    assert snap is not None
    assert (snap.limit_requests, snap.limit_tokens, snap.remaining_tokens) == (50, 40000, 0)
    assert snap.retry_after_s == 3.0


def test_no_headers_say_nothing() -> None:
    assert parse_rate_headers(None, now=NOW) is None
    assert parse_rate_headers({"content-type": "application/json"}, now=NOW) is None


def test_prices_come_from_the_teachers_file_first() -> None:
    try:
        pricing.use_teachers(
            [
                TeacherEndpoint(
                    "openai", TeacherKind.OPENAI, prices={"gpt-4o-mini": Price(1.0, 2.0)}
                ),
                TeacherEndpoint(
                    "vllm", TeacherKind.OPENAI_COMPATIBLE, prices={"llama": Price(0.1, 0.2)}
                ),
                TeacherEndpoint("plain", TeacherKind.OPENAI_COMPATIBLE),
            ]
        )
        assert pricing.cost_usd("openai", "gpt-4o-mini", 1_000_000, 0) == 1.0
        assert pricing.price_for("openai", "gpt-4o") == pricing.PRICES["openai"]["gpt-4o"]
        assert pricing.cost_usd("vllm", "llama", 0, 1_000_000) == pytest.approx(0.2)
        assert pricing.price_for("plain", "gpt-4o") is None  # never guessed
    finally:
        pricing.use_teachers([])
