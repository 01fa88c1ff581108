"""One rate limit per teacher, shared by every worker process through Redis.

Each (teacher, model) bucket is a sliding one-second window of the calls
granted (a sorted set, members `run|tokens`): a call is granted only while
the last second holds fewer than requests_per_min / 60 calls and
tokens_per_min / 60 tokens (prompt bound + max_tokens, corrected to the usage
after the call), run slightly under the limit (`MARGIN`). A provider counting
in one-second windows (OpenAI) then never sees one too many, however late a
busy worker comes back: the grant is taken when the call goes out, not booked
ahead. A caller told to wait is given a turn at the back of one queue per
teacher (one call's share of a second after the last turn), and keeps it when
it asks again: waiters do not all return at once, and none is overtaken for
coming back. One still refused past its turn comes back after those ahead
of it (one call's share of a second each), not with all of them at the next
free slot: a herd of waiters polling Redis every few milliseconds cost the
workers more CPU than the calls themselves.
Requests in flight are a sorted set of leases that expire, so a killed
worker leaks nothing.

With nothing configured the limiter learns: the limits from the answers'
rate-limit headers, and a 429's retry-after blocks the bucket for every
worker at once. A 429 also cuts the pace for a while (`BACKOFF_*`): calls
granted under the limit can still reach a provider bunched together. Until
the first answer of a bucket arrives, only `PROBE_IN_FLIGHT` calls go out.
Everything here can vanish (FLUSHDB, a restart): the limiter starts learning
again.

Every acquire and every settle is one script, one round trip.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from nex.collector.server.domain.ratelimits import RateSnapshot

log = logging.getLogger(__name__)

PREFIX = "nexc:rl:"
MARGIN = 0.95
PROBE_IN_FLIGHT = 4
STATE_TTL_MS = 15 * 60 * 1000  # learned limits are forgotten after 15 idle minutes
IN_FLIGHT_RETRY_MS = 250
USAGE_SLOT_MS = 10_000
# What a 429 does to the pace, beyond the retry-after block every worker obeys:
# a provider that says 429 while we stay under its limit counts differently
# (calls from a busy worker reach it bunched, its clock is not ours), so the
# pace is cut by CUT (at most once a second, never below FLOOR) and recovers
# by RECOVER_PER_S of the limit each second without one.
BACKOFF_CUT = 0.95
BACKOFF_FLOOR = 0.7
BACKOFF_RECOVER_PER_S = 0.1


def _script(text: str) -> str:
    return (
        text.replace("@RECOVER@", repr(BACKOFF_RECOVER_PER_S / 1000))
        .replace("@CUT@", repr(BACKOFF_CUT))
        .replace("@FLOOR@", repr(BACKOFF_FLOOR))
    )


# KEYS: bucket hash, in-flight zset, waiting zset, window zset.
# ARGV: cfg rpm, cfg tpm, cfg in flight, cost tokens, lease id, lease ms, margin,
#       probe in flight, state ttl ms, in-flight retry ms.
# Returns {granted, wait_ms, reason}.
_ACQUIRE = _script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg_rpm, cfg_tpm, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, id, lease, margin = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'lrpm', 'ltpm', 'blocked', 'learned', 'wtokens', 'f', 'ft')
local function limit(cfg, learned)
  learned = tonumber(learned) or 0
  if learned > 0 and (cfg == 0 or learned < cfg) then return learned end
  return cfg
end
local rpm, tpm = limit(cfg_rpm, s[1]), limit(cfg_tpm, s[2])
local blocked, wtokens = tonumber(s[3]) or 0, tonumber(s[5]) or 0
local function wait(ms, why, per_s)
  -- The waiting runs form one queue, by turn (the zset's score): a run keeps
  -- its turn when it asks again, so coming back never sends it to the back.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 30000)
  local turn = tonumber(redis.call('ZSCORE', KEYS[3], id))
  if turn then
    ms = math.max(ms, turn - now)
    if turn <= now and per_s and per_s > 0 then
      -- past its turn and still refused: come back after those ahead of it,
      -- not with all of them at the next free slot
      local ahead = redis.call('ZRANK', KEYS[3], id)
      ms = math.max(ms, ahead * 1000 / per_s)
    end
  elseif per_s and per_s > 0 then
    local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
    local tail = now
    if #last > 0 then tail = math.max(now, tonumber(last[2])) end
    ms = math.max(ms, tail + 1000 / per_s - now)
    redis.call('ZADD', KEYS[3], now + ms, id)
  else
    redis.call('ZADD', KEYS[3], now + ms, id)
  end
  redis.call('PEXPIRE', KEYS[3], math.ceil(ms) + 60000)
  return {0, math.ceil(ms), why}
end
-- after a 429 the pace is cut, then recovers (see BACKOFF)
local f0, ft = tonumber(s[6]), tonumber(s[7])
if f0 and ft then margin = margin * math.min(1, f0 + (now - ft) * @RECOVER@) end
local cap_r = 0
if rpm > 0 then cap_r = math.max(1, math.floor(rpm / 60 * margin)) end
local cap_t = 0
if tpm > 0 then cap_t = math.max(1, math.floor(tpm / 60 * margin)) end
-- blocked by a 429: queue up behind the block, in turn, not all at its end
if blocked > now then return wait(blocked - now, 'blocked', cap_r) end
-- The calls of the last second (members 'id|tokens'); never more than the
-- limit's share of a second in any second, however late a caller comes.
if rpm > 0 or tpm > 0 then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now - 1000)
  if #expired > 0 then
    for _, m in ipairs(expired) do
      wtokens = wtokens - (tonumber(string.match(m, '|(%d+)$')) or 0)
    end
    if wtokens < 0 then wtokens = 0 end
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - 1000)
    redis.call('HSET', KEYS[1], 'wtokens', wtokens)
  end
  local count = redis.call('ZCARD', KEYS[4])
  if cap_r > 0 and count >= cap_r then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return wait(tonumber(oldest[2]) + 1000 - now + 1, 'requests', cap_r)
  end
  -- and no burst: at most twice the average rate in any tenth of a second, so
  -- calls that leave a busy worker late do not land in one provider second
  if cap_r >= 10 and redis.call('ZCOUNT', KEYS[4], now - 100, '+inf') >= math.ceil(cap_r / 5) then
    return wait(20 + math.random(0, 30), 'requests', nil)
  end
  if cap_t > 0 and wtokens > 0 and wtokens + cost > cap_t then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return wait(tonumber(oldest[2]) + 1000 - now + 1, 'tokens', cap_t / math.max(cost, 1))
  end
end
if cap == 0 and cfg_rpm == 0 and cfg_tpm == 0 and not s[4] then cap = tonumber(ARGV[8]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then
  return wait(tonumber(ARGV[10]), 'in_flight', nil)
end
if rpm > 0 or tpm > 0 or not s[4] then  -- probes count too, once limits are learned
  redis.call('ZADD', KEYS[4], now, id .. '|' .. cost)
  redis.call('PEXPIRE', KEYS[4], 5000)
  redis.call('HSET', KEYS[1], 'wtokens', wtokens + cost)
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end
redis.call('ZADD', KEYS[2], now + lease, id)
redis.call('PEXPIRE', KEYS[2], lease + 60000)
redis.call('ZREM', KEYS[3], id)
return {1, 0, ''}
""")

# KEYS: bucket hash, in-flight zset, usage key prefix, window zset.
# ARGV: lease id, reserved tokens, used tokens, cfg tpm, margin, learned rpm,
#       learned tpm, block ms, answered (1: any answer came back), rate limited
#       (1: a 429), state ttl ms.
# Returns {calls, tokens, 429s} of the teacher over the last minute.
_SETTLE = _script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
redis.call('ZREM', KEYS[2], id)
local reserved, used = tonumber(ARGV[2]), tonumber(ARGV[3])
local lrpm, ltpm, block = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if lrpm > 0 then redis.call('HSET', KEYS[1], 'lrpm', lrpm) end
if ltpm > 0 then redis.call('HSET', KEYS[1], 'ltpm', ltpm) end
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'learned', 1) end
-- correct the call's tokens to what it used, if it is still in the window
local member = id .. '|' .. reserved
local at = redis.call('ZSCORE', KEYS[4], member)
if at and used ~= reserved then
  redis.call('ZREM', KEYS[4], member)
  redis.call('ZADD', KEYS[4], at, id .. '|' .. used)
  redis.call('HINCRBY', KEYS[1], 'wtokens', used - reserved)
end
if block > 0 then
  local stop = now + block
  if stop > (tonumber(redis.call('HGET', KEYS[1], 'blocked')) or 0) then
    redis.call('HSET', KEYS[1], 'blocked', stop)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
local slot = math.floor(now / 10000)
local key = KEYS[3] .. slot
if ARGV[10] == '1' then
  redis.call('HINCRBY', key, 'limited', 1)
  -- one cut of the pace per second of 429s, from wherever it had recovered to
  local h = redis.call('HMGET', KEYS[1], 'f', 'ft')
  local f0, ft = tonumber(h[1]), tonumber(h[2])
  if not ft or now - ft > 1000 then
    local f = 1
    if f0 and ft then f = math.min(1, f0 + (now - ft) * @RECOVER@) end
    redis.call('HSET', KEYS[1], 'f', math.max(@FLOOR@, f * @CUT@), 'ft', now)
  end
else
  redis.call('HINCRBY', key, 'calls', 1)
  redis.call('HINCRBY', key, 'tokens', used)
end
redis.call('PEXPIRE', key, 80000)
local out = {0, 0, 0}
for i = 0, 5 do
  local v = redis.call('HMGET', KEYS[3] .. (slot - i), 'calls', 'tokens', 'limited')
  out[1] = out[1] + (tonumber(v[1]) or 0)
  out[2] = out[2] + (tonumber(v[2]) or 0)
  out[3] = out[3] + (tonumber(v[3]) or 0)
end
return out
""")

# KEYS: in-flight zset, waiting zset, usage key prefix. Returns
# {in flight, waiting, calls, tokens, 429s} (the last three over the last minute).
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = math.floor(now / 10000)
local out = {redis.call('ZCOUNT', KEYS[1], now, '+inf'), 0, 0, 0, 0}
out[2] = redis.call('ZCOUNT', KEYS[2], now - 30000, '+inf')
for i = 0, 5 do
  local v = redis.call('HMGET', KEYS[3] .. (slot - i), 'calls', 'tokens', 'limited')
  out[3] = out[3] + (tonumber(v[1]) or 0)
  out[4] = out[4] + (tonumber(v[2]) or 0)
  out[5] = out[5] + (tonumber(v[3]) or 0)
end
return out
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """Whether a call may start now; if not, how long until it may, and why
    (`requests`, `tokens`, `in_flight` or `blocked` after a 429)."""

    granted: bool
    wait_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BucketLimits:
    """Configured limits of a teacher (0: none, learn them)."""

    requests_per_min: int = 0
    tokens_per_min: int = 0
    max_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """A teacher's load over the last minute, over every worker."""

    calls_per_min: int = 0
    tokens_per_min: int = 0
    rate_limited_per_min: int = 0
    in_flight: int = 0
    waiting: int = 0


GRANTED = Grant(True)


class RateLimiter:
    def __init__(self, redis: Redis, *, lease_s: float, margin: float = MARGIN) -> None:
        self._redis = redis
        self._lease_ms = int(lease_s * 1000)
        self._margin = margin
        self._acquire: Any = redis.register_script(_ACQUIRE)
        self._settle: Any = redis.register_script(_SETTLE)
        self._usage: Any = redis.register_script(_USAGE)

    @staticmethod
    def _keys(teacher: str, model: str) -> tuple[str, str, str, str, str]:
        return (
            f"{PREFIX}b:{teacher}:{model}",
            f"{PREFIX}inflight:{teacher}",
            f"{PREFIX}waiting:{teacher}",
            f"{PREFIX}usage:{teacher}:",
            f"{PREFIX}w:{teacher}:{model}",
        )

    async def acquire(
        self, teacher: str, model: str, run_id: str, cost_tokens: int, limits: BucketLimits
    ) -> Grant:
        """Takes a slot for one call now, or books the next one and says how
        long to wait for it. Redis unreachable: the call goes ahead (the job
        queue is down too; the provider's 429s still slow it)."""
        bucket, in_flight, waiting, _, window = self._keys(teacher, model)
        args = [
            limits.requests_per_min,
            limits.tokens_per_min,
            limits.max_in_flight,
            cost_tokens,
            run_id,
            self._lease_ms,
            self._margin,
            PROBE_IN_FLIGHT,
            STATE_TTL_MS,
            IN_FLIGHT_RETRY_MS + random.randrange(IN_FLIGHT_RETRY_MS),
        ]
        try:
            granted, wait_ms, reason = await self._acquire(
                keys=[bucket, in_flight, waiting, window], args=args
            )
        except RedisError as exc:
            log.warning("rate limiter unavailable (%s); calling without it", exc)
            return GRANTED
        if granted:
            return GRANTED
        return Grant(
            False, int(wait_ms) / 1000, reason.decode() if isinstance(reason, bytes) else reason
        )

    async def settle(
        self,
        teacher: str,
        model: str,
        run_id: str,
        *,
        reserved_tokens: int,
        used_tokens: int,
        limits: BucketLimits,
        snapshot: RateSnapshot | None,
        answered: bool,
        rate_limited: bool,
    ) -> Usage | None:
        """Frees the call's slot, corrects its tokens to the real usage and
        learns from what the provider said. Returns the teacher's usage."""
        bucket, in_flight, _, usage, window = self._keys(teacher, model)
        snap = snapshot or RateSnapshot()
        # Only a 429 blocks: a window with nothing remaining is already paced
        # by the learned limit, and blocking on it would stall the schedule.
        block_s = 0.0
        if rate_limited:
            block_s = snap.block_s or 1.0  # a 429 that does not say: hold off a second
        args = [
            run_id,
            reserved_tokens,
            used_tokens,
            limits.tokens_per_min,
            self._margin,
            snap.limit_requests or 0,
            snap.limit_tokens or 0,
            int(block_s * 1000),
            1 if answered else 0,
            1 if rate_limited else 0,
            STATE_TTL_MS,
        ]
        try:
            calls, tokens, limited = await self._settle(
                keys=[bucket, in_flight, usage, window], args=args
            )
        except RedisError as exc:
            log.warning("rate limiter unavailable (%s); slot not settled", exc)
            return None
        return Usage(int(calls), int(tokens), int(limited))

    async def usage(self, teacher: str) -> Usage:
        _, in_flight, waiting, usage, _ = self._keys(teacher, "")
        try:
            flying, queued, calls, tokens, limited = await self._usage(
                keys=[in_flight, waiting, usage], args=[]
            )
        except RedisError:
            return Usage()
        return Usage(int(calls), int(tokens), int(limited), int(flying), int(queued))
