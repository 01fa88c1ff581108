"""The arq job queue: job names, and a bulk enqueue that keeps arq's format and
its uniqueness rule (a job id that is queued, running or has a result is skipped)
in one Redis round trip for thousands of jobs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

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

log = logging.getLogger(__name__)

EXECUTE_RUN = "execute_run"
BUILD_DATASET = "build_dataset"
DELIVER_EVIDENCE = "deliver_evidence"

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
    def __init__(self, redis: ArqRedis, queue_name: str = default_queue_name) -> None:
        self.redis = redis
        self.queue_name = queue_name
        self._script = redis.register_script(_ENQUEUE_MANY)

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

    async def release(self, function: str, ids: Sequence[str]) -> int:
        """Makes jobs whose worker died startable again at once (arq would wait for
        its in-progress marker to time out), then enqueues any that are gone."""
        if ids:
            await self.redis.delete(*(in_progress_key_prefix + i for i in ids))
        return await self.enqueue(function, ids)

    async def try_enqueue(self, function: str, ids: Sequence[str]) -> None:
        """Enqueue, but a Redis failure only logs: PostgreSQL holds the work and the
        reconciler enqueues it again."""
        try:
            await self.enqueue(function, ids)
        except Exception as exc:
            log.warning(
                "could not enqueue %d %s jobs (%s); the reconciler will", len(ids), function, exc
            )
