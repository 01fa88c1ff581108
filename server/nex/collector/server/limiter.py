"""One rate limit per teacher, shared by every worker process through Redis.

Each (teacher, model) bucket is a GCRA schedule: a call books the next start
time, one request every 60 s / requests_per_min and its tokens (prompt bound +
max_tokens) at tokens_per_min, run slightly under the limit (`MARGIN`) so that
a provider counting in one-second windows never sees one too many. A booking
that lies in the future is kept under the run's id, so the run can hand itself
back to the queue and come back for exactly that slot. Requests in flight are a
sorted set of leases that expire, so a killed worker leaks nothing.

With nothing configured the limiter learns: the limits from the answers'
rate-limit headers, and a 429's retry-after (or a window with nothing
remaining) blocks the bucket for every worker at once. Until the first answer
of a bucket arrives, only `PROBE_IN_FLIGHT` calls go out. Everything here can
vanish (FLUSHDB, a restart): the limiter starts learning again.

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
STALE_BOOKING_MS = 750
USAGE_SLOT_MS = 10_000

# KEYS: bucket hash, in-flight zset, waiting zset, reservation key.
# ARGV: cfg rpm, cfg tpm, cfg in flight, cost tokens, lease id, lease ms, margin,
#       probe in flight, state ttl ms, in-flight retry ms, stale booking ms.
# Returns {granted, wait_ms, reason}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cfg_rpm, cfg_tpm, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cost, id, lease, margin = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call(
  'HMGET', KEYS[1], 'lrpm', 'ltpm', 'tat_r', 'tat_t', 'blocked', 'learned', 'shift')
local function limit(cfg, learned)
  learned = tonumber(learned) or 0
  if learned > 0 and (cfg == 0 or learned < cfg) then return learned end
  return cfg
end
local rpm, tpm = limit(cfg_rpm, s[1]), limit(cfg_tpm, s[2])
local tat_r, tat_t = tonumber(s[3]) or 0, tonumber(s[4]) or 0
local blocked, shift = tonumber(s[5]) or 0, tonumber(s[7]) or 0
local function wait(ms, why)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZADD', KEYS[3], now + ms + 30000, id)
  redis.call('PEXPIRE', KEYS[3], math.ceil(ms) + 60000)
  return {0, math.ceil(ms), why}
end
-- A booked slot, moved by every block since (shift); one missed by more
-- than the tolerance is given up: using it late would burst.
local start = tonumber(redis.call('GET', KEYS[4]))
if start then
  start = start + shift
  if start < now - tonumber(ARGV[11]) then start = nil end
end
local why = 'requests'
if not start then
  start = math.max(now, blocked)
  if blocked > now then why = 'blocked' end
  if rpm > 0 and tat_r > start then start = tat_r; why = 'requests' end
  if tpm > 0 and tat_t > start then start = tat_t; why = 'tokens' end
  if rpm > 0 or tpm > 0 then
    if rpm > 0 then tat_r = start + 60000 / (rpm * margin) end
    if tpm > 0 then tat_t = start + cost * 60000 / (tpm * margin) end
    redis.call('HSET', KEYS[1], 'tat_r', tat_r, 'tat_t', tat_t)
    redis.call('PEXPIRE', KEYS[1], ARGV[9])
    if start > now then
      redis.call('SET', KEYS[4], start - shift, 'PX', math.ceil(start - now) + 120000)
    end
  end
elseif blocked > start then
  start = blocked
  why = 'blocked'
end
if start > now then return wait(start - now, why) end
if cap == 0 and cfg_rpm == 0 and cfg_tpm == 0 and not s[6] then cap = tonumber(ARGV[8]) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then
  return wait(tonumber(ARGV[10]), 'in_flight')
end
redis.call('ZADD', KEYS[2], now + lease, id)
redis.call('PEXPIRE', KEYS[2], lease + 60000)
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[3], id)
return {1, 0, ''}
"""

# KEYS: bucket hash, in-flight zset, usage key prefix.
# ARGV: lease id, reserved tokens, used tokens, cfg tpm, margin, learned rpm,
#       learned tpm, block ms, answered (1: any answer came back), rate limited
#       (1: a 429), state ttl ms.
# Returns {calls, tokens, 429s} of the teacher over the last minute.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[2], ARGV[1])
local reserved, used = tonumber(ARGV[2]), tonumber(ARGV[3])
local cfg_tpm, margin = tonumber(ARGV[4]), tonumber(ARGV[5])
local lrpm, ltpm, block = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local s = redis.call('HMGET', KEYS[1], 'ltpm', 'tat_r', 'tat_t', 'blocked')
if lrpm > 0 then redis.call('HSET', KEYS[1], 'lrpm', lrpm) end
if ltpm > 0 then redis.call('HSET', KEYS[1], 'ltpm', ltpm) end
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'learned', 1) end
local tpm = cfg_tpm
local known = ltpm > 0 and ltpm or (tonumber(s[1]) or 0)
if known > 0 and (tpm == 0 or known < tpm) then tpm = known end
local tat_r, tat_t = tonumber(s[2]) or 0, tonumber(s[3]) or 0
if tpm > 0 and reserved > used and tat_t > now then
  tat_t = math.max(now, tat_t - (reserved - used) * 60000 / (tpm * margin))
  redis.call('HSET', KEYS[1], 'tat_t', tat_t)
end
if block > 0 then
  -- Everyone holds off until `stop`; every booked slot moves by the same gap,
  -- so the schedule resumes as it was instead of all at once.
  local stop, old = now + block, tonumber(s[4]) or 0
  if stop > old then
    local gap = stop - math.max(now, old)
    redis.call('HSET', KEYS[1], 'blocked', stop)
    redis.call('HINCRBYFLOAT', KEYS[1], 'shift', gap)
    tat_r, tat_t = math.max(tat_r, now) + gap, math.max(tat_t, now) + gap
    redis.call('HSET', KEYS[1], 'tat_r', tat_r, 'tat_t', tat_t)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
local slot = math.floor(now / 10000)
local key = KEYS[3] .. slot
if ARGV[10] == '1' then
  redis.call('HINCRBY', key, 'limited', 1)
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
"""

# KEYS: in-flight zset, waiting zset, usage key prefix. Returns
# {in flight, waiting, calls, tokens, 429s} (the last three over the last minute).
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = math.floor(now / 10000)
local out = {redis.call('ZCOUNT', KEYS[1], now, '+inf'), 0, 0, 0, 0}
out[2] = redis.call('ZCOUNT', KEYS[2], now, '+inf')
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
    def _keys(teacher: str, model: str) -> tuple[str, str, str, str]:
        return (
            f"{PREFIX}b:{teacher}:{model}",
            f"{PREFIX}inflight:{teacher}",
            f"{PREFIX}waiting:{teacher}",
            f"{PREFIX}usage:{teacher}:",
        )

    async def acquire(
        self, teacher: str, model: str, run_id: str, cost_tokens: int, limits: BucketLimits
    ) -> Grant:
        """Takes a slot for one call now, or books the next one and says how
        long to wait for it. Redis unreachable: the call goes ahead (the job
        queue is down too; the provider's 429s still slow it)."""
        bucket, in_flight, waiting, _ = self._keys(teacher, model)
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
            STALE_BOOKING_MS,
        ]
        try:
            granted, wait_ms, reason = await self._acquire(
                keys=[bucket, in_flight, waiting, f"{PREFIX}resv:{run_id}"], args=args
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
        bucket, in_flight, _, usage = self._keys(teacher, model)
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
            calls, tokens, limited = await self._settle(keys=[bucket, in_flight, usage], args=args)
        except RedisError as exc:
            log.warning("rate limiter unavailable (%s); slot not settled", exc)
            return None
        return Usage(int(calls), int(tokens), int(limited))

    async def usage(self, teacher: str) -> Usage:
        _, in_flight, waiting, usage = self._keys(teacher, "")
        try:
            flying, queued, calls, tokens, limited = await self._usage(
                keys=[in_flight, waiting, usage], args=[]
            )
        except RedisError:
            return Usage()
        return Usage(int(calls), int(tokens), int(limited), int(flying), int(queued))
