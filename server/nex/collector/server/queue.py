"""The arq job queue: job names, and a bulk enqueue that keeps arq's format and
its uniqueness rule (a job id that is queued, running or has a result is skipped)
in one Redis round trip for thousands of jobs."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from arq.connections import ArqRedis
from arq.constants import (
    default_queue_name,
    expires_extra_ms,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from nex.collector.server.config import Settings

log = logging.getLogger(__name__)

EXECUTE_RUN = "execute_run"
BUILD_DATASET = "build_dataset"
BUILD_DATASET_PART = "build_dataset_part"
DELIVER_EVIDENCE = "deliver_evidence"


def job_timeouts(settings: Settings) -> dict[str, float]:
    """Seconds each job may run before arq gives up on it."""
    return {
        EXECUTE_RUN: (settings.teacher_timeout_s + 30) * settings.teacher_max_attempts + 60,
        BUILD_DATASET: 6 * 3600,
        BUILD_DATASET_PART: 6 * 3600,
        DELIVER_EVIDENCE: settings.nex_timeout_s * 2 + 30,
    }


def in_progress_ttl_ms(settings: Settings) -> int:
    """How long arq's in-progress marker lives (arq: the longest timeout + 10 s)."""
    return int((max(job_timeouts(settings).values()) + 10) * 1000)


# In-progress markers of our workers hold the id of the worker that started the
# job (arq's own hold "1"). A marker is freed only when its worker is not alive.
#
# ARGV = oldest allowed ttl of an ownerless marker, n, n live worker ids, then
# (job key, marker key, id)... Returns the ids whose job is gone; frees markers of
# dead workers (ownerless ones: older than the grace period).
_RECOVER = """
local threshold, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local live = {}
for i = 3, 2 + n do live[ARGV[i]] = true end
local missing = {}
for i = 3 + n, #ARGV, 3 do
  if redis.call('EXISTS', ARGV[i]) == 0 then
    table.insert(missing, ARGV[i + 2])
  else
    local owner = redis.call('GET', ARGV[i + 1])
    if owner == '1' then
      local ttl = redis.call('PTTL', ARGV[i + 1])
      if ttl > 0 and ttl < threshold then
        redis.call('DEL', ARGV[i + 1])
      end
    elseif owner and not live[owner] then
      redis.call('DEL', ARGV[i + 1])
    end
  end
end
return missing
"""

# ARGV = n, n live worker ids, then marker keys: deletes those no live worker holds.
_FREE = """
local n = tonumber(ARGV[1])
local live = {}
for i = 2, 1 + n do live[ARGV[i]] = true end
local freed = 0
for i = 2 + n, #ARGV do
  local owner = redis.call('GET', ARGV[i])
  if owner and not live[owner] then
    redis.call('DEL', ARGV[i])
    freed = freed + 1
  end
end
return freed
"""

# KEYS[1] = queue; ARGV = score, expires_ms, then (job_key, result_key, job_id, payload)…
_ENQUEUE_MANY = """
local added = 0
for i = 3, #ARGV, 4 do
  if redis.call('EXISTS', ARGV[i], ARGV[i + 1]) == 0 then
    redis.call('PSETEX', ARGV[i], ARGV[2], ARGV[i + 3])
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i + 2])
    added = added + 1
  end
end
return added
"""


class JobQueue:
    def __init__(
        self, redis: ArqRedis, *, marker_ttl_ms: int, queue_name: str = default_queue_name
    ) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._marker_ttl_ms = marker_ttl_ms
        self._script = redis.register_script(_ENQUEUE_MANY)
        self._recover_script = redis.register_script(_RECOVER)
        self._free_script = redis.register_script(_FREE)

    async def enqueue(self, function: str, ids: Sequence[str], *, chunk: int = 2000) -> int:
        """Enqueues `function(id)` with `_job_id=id` for each id; returns how many were new."""
        added = 0
        for start in range(0, len(ids), chunk):
            now = timestamp_ms()
            argv: list[str | bytes | int] = [now, expires_extra_ms]
            for job_id in ids[start : start + chunk]:
                payload = serialize_job(function, (job_id,), {}, None, now)
                argv += [job_key_prefix + job_id, result_key_prefix + job_id, job_id, payload]
            added += int(await self._script(keys=[self.queue_name], args=argv))
        return added

    async def release(
        self, function: str, ids: Sequence[str], *, live_workers: Collection[str] | None = None
    ) -> int:
        """Makes jobs whose worker died startable again at once (arq would wait for
        its in-progress marker to time out), then enqueues any that are gone.
        With `live_workers`, a marker one of them holds is left alone."""
        if ids:
            if live_workers is None:
                await self.redis.delete(*(in_progress_key_prefix + i for i in ids))
            else:
                live = sorted(live_workers)
                markers = [in_progress_key_prefix + i for i in ids]
                await self._free_script(keys=[], args=[len(live), *live, *markers])
        return await self.enqueue(function, ids)

    async def recover(
        self,
        function: str,
        ids: Sequence[str],
        *,
        grace_s: float,
        live_workers: Collection[str] = (),
    ) -> int:
        """For work PostgreSQL says is still queued: enqueues the jobs Redis lost,
        and frees jobs a dead worker had started but never claimed. A job a live
        worker started stays its own however long its claim takes (a marker with
        no owner is freed once older than `grace_s`). Jobs merely waiting in the
        queue are left alone."""
        if not ids:
            return 0
        threshold = self._marker_ttl_ms - int(grace_s * 1000)
        live = sorted(live_workers)
        argv: list[str | int] = [threshold, len(live), *live]
        for job_id in ids:
            argv += [job_key_prefix + job_id, in_progress_key_prefix + job_id, job_id]
        missing = await self._recover_script(keys=[], args=argv)
        return await self.enqueue(function, [m.decode() for m in missing]) if missing else 0

    async def try_enqueue(self, function: str, ids: Sequence[str]) -> None:
        """Enqueue, but a Redis failure only logs: PostgreSQL holds the work and the
        reconciler enqueues it again."""
        try:
            await self.enqueue(function, ids)
        except Exception as exc:
            log.warning(
                "could not enqueue %d %s jobs (%s); the reconciler will", len(ids), function, exc
            )
