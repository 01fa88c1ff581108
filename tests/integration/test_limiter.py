"""The shared limiter against a real Redis: spacing, learning, blocking,
in-flight leases, forgetting everything on FLUSHDB."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from nex.collector.server.domain.ratelimits import RateSnapshot
from nex.collector.server.limiter import (
    BACKOFF_CUT,
    PROBE_IN_FLIGHT,
    BucketLimits,
    RateLimiter,
)
from tests.support.backing import Backing

NONE = BucketLimits()


@pytest.fixture
def own(backing: Backing) -> Iterator[Backing]:
    with backing.isolated() as isolated:
        yield isolated


@pytest.fixture
async def redis(own: Backing) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(own.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def _settle(limiter: RateLimiter, run: str, **kw: object) -> None:
    args: dict[str, object] = {
        "reserved_tokens": 10,
        "used_tokens": 10,
        "limits": NONE,
        "snapshot": None,
        "answered": True,
        "rate_limited": False,
    }
    args.update(kw)
    await limiter.settle("t", "m", run, **args)  # type: ignore[arg-type]


async def test_configured_requests_stay_within_any_second(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(requests_per_min=300)  # 5 in any second
    grants = [await limiter.acquire("t", "m", f"r{i}", 10, limits) for i in range(7)]
    assert [g.granted for g in grants] == [True] * 5 + [False] * 2
    assert grants[5].reason == "requests"
    assert 0.5 < grants[5].wait_s <= 1.05


async def test_waiters_queue_in_turn_and_keep_their_turn(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(requests_per_min=540)  # 9 in any second
    assert all([(await limiter.acquire("t", "m", f"r{i}", 10, limits)).granted for i in range(9)])
    turns = []  # when each was told to come back (Redis time ~ this clock, within a call)
    for i in range(30):
        asked = time.monotonic()
        turns.append(asked + (await limiter.acquire("t", "m", f"w{i}", 10, limits)).wait_s)
    # one call's share of a second apart (1/9 s), in the order they asked
    gaps = [b - a for a, b in itertools.pairwise(turns)]
    assert min(gaps) > 0 and turns[-1] - turns[0] > 29 / 9 - 0.3
    # asking again keeps the place in the queue instead of going to the back
    asked = time.monotonic()
    again = await limiter.acquire("t", "m", "w0", 10, limits)
    assert not again.granted and asked + again.wait_s < turns[0] + 0.3
    assert (await limiter.usage("t")).waiting == 30


async def test_waiters_past_their_turn_come_back_in_turn_not_together(
    redis: aioredis.Redis,
) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(requests_per_min=120)  # 2 in any second: turns 1/2 s apart
    assert all([(await limiter.acquire("t", "m", f"r{i}", 10, limits)).granted for i in range(2)])
    waits = [(await limiter.acquire("t", "m", f"w{i}", 10, limits)).wait_s for i in range(4)]
    assert waits == sorted(waits) and waits[-1] < 2.6
    await asyncio.sleep(waits[-1] + 0.05)  # every turn has passed; the window is empty
    assert all([(await limiter.acquire("t", "m", f"n{i}", 10, limits)).granted for i in range(2)])
    # the window is full again: each waiter past its turn comes back after those
    # ahead of it (one call's share of a second each), not all at the next free slot
    again = [await limiter.acquire("t", "m", f"w{i}", 10, limits) for i in range(4)]
    assert not any(g.granted for g in again)
    assert again[0].wait_s <= 1.05
    assert [round(g.wait_s - again[0].wait_s, 1) for g in again[2:]] == [0.0, 0.5]
    assert again[3].wait_s >= 1.45


async def test_a_429_under_the_limit_cuts_the_pace(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(requests_per_min=540)  # 9 in any second
    assert (await limiter.acquire("t", "m", "first", 10, limits)).granted
    # the provider counts differently from us: a 429 though we stayed under
    await _settle(
        limiter,
        "first",
        limits=limits,
        rate_limited=True,
        answered=False,
        snapshot=RateSnapshot(retry_after_s=0.001),
    )
    await asyncio.sleep(0.01)
    grants = [await limiter.acquire("t", "m", f"r{i}", 10, limits) for i in range(9)]
    # 9 x BACKOFF_CUT in the second: the one already in the window and the rest
    allowed = math.floor(9 * BACKOFF_CUT)
    assert allowed < 9
    assert [g.granted for g in grants] == [True] * (allowed - 1) + [False] * (10 - allowed)


async def test_high_limits_allow_no_burst(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(requests_per_min=6000)  # 100 a second, at most 20 in 100 ms
    # all at once, so that they land within 100 ms however busy this machine is
    grants = await asyncio.gather(
        *(limiter.acquire("t", "m", f"r{i}", 10, limits) for i in range(21))
    )
    assert sum(g.granted for g in grants) == 20
    assert next(g.wait_s for g in grants if not g.granted) < 0.1


async def test_tokens_are_counted_and_corrected(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    limits = BucketLimits(tokens_per_min=60_000)  # 1,000 a second
    assert (await limiter.acquire("t", "m", "a", 600, limits)).granted
    assert not (await limiter.acquire("t", "m", "b", 600, limits)).granted
    await _settle(limiter, "a", reserved_tokens=600, used_tokens=100, limits=limits)
    assert (await limiter.acquire("t", "m", "b", 600, limits)).granted


async def test_unknown_limits_probe_then_learn_from_headers(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60, margin=1.0)
    grants = [
        await limiter.acquire("t", "m", f"r{i}", 10, NONE) for i in range(PROBE_IN_FLIGHT + 1)
    ]
    assert [g.granted for g in grants] == [True] * PROBE_IN_FLIGHT + [False]
    assert grants[-1].reason == "in_flight"
    await _settle(limiter, "r0", snapshot=RateSnapshot(limit_requests=480))  # 8 a second
    learned = [await limiter.acquire("t", "m", f"n{i}", 10, NONE) for i in range(6)]
    # The probes went out this second too: they count against the learned limit.
    assert [g.granted for g in learned] == [True] * 4 + [False] * 2
    assert learned[-1].reason == "requests"


async def test_a_429_blocks_every_caller(redis: aioredis.Redis) -> None:
    limiter = RateLimiter(redis, lease_s=60)
    assert (await limiter.acquire("t", "m", "a", 10, NONE)).granted
    await _settle(
        limiter, "a", answered=False, rate_limited=True, snapshot=RateSnapshot(retry_after_s=2)
    )
    grant = await limiter.acquire("t", "m", "b", 10, NONE)
    assert not grant.granted and grant.reason == "blocked"
    assert grant.wait_s == pytest.approx(2, abs=0.1)
    usage = await limiter.usage("t")
    assert usage.rate_limited_per_min == 1 and usage.waiting == 1


async def test_flushdb_forgets_everything_and_probing_starts_again(
    redis: aioredis.Redis,
) -> None:
    limiter = RateLimiter(redis, lease_s=60)
    await limiter.acquire("t", "m", "a", 10, NONE)
    await _settle(limiter, "a", snapshot=RateSnapshot(limit_requests=60))
    assert not (await limiter.acquire("t", "m", "b", 10, NONE)).granted or True
    await redis.flushdb()
    grants = [await limiter.acquire("t", "m", f"r{i}", 10, NONE) for i in range(PROBE_IN_FLIGHT)]
    assert all(g.granted for g in grants)
