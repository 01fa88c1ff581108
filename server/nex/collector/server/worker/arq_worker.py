"""arq's Worker, starting jobs in one Redis round trip per poll.

arq's own `start_jobs` checks and marks each job with ~4 sequential round
trips, and the queue's head keeps the jobs already running, so a busy worker
spends its time re-checking them: starts cap near a hundred jobs a second. Here
one Lua script scans the head of the queue inside Redis and does the same
checks and marks (same keys, same semantics) for as many jobs as there are
free slots. Its in-progress markers hold the worker's id instead of arq's "1",
so that the reconciler frees a job only when the worker that started it is
dead; and a job this worker is already running is never run twice at once
(arq keeps one task per job id): the second start waits for the first to end.

The common end of a job (done, no result kept) is written for every job that
ends within the same few milliseconds in one MULTI/EXEC: arq's own
`finish_job` is one transaction per job, a Redis round trip per run. Any other
end (deferred, retried, a result kept) is arq's own.

Its `close` waits for every job it cancels: arq's own gathers them without
`return_exceptions`, so it re-raises the first job's CancelledError and
returns while the other jobs are still handing their runs back."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms
from arq.worker import Worker

from nex.collector.server.services.microbatch import MicroBatcher

log = logging.getLogger(__name__)

# KEYS[1] = queue. ARGV = now_ms, in-progress ttl ms, free slots, how far to scan,
# prefix, owner (the marker's value).
_START = """
local now, ttl, prefix, owner = tonumber(ARGV[1]), ARGV[2], ARGV[5], ARGV[6]
local free, scan = tonumber(ARGV[3]), tonumber(ARGV[4])
local started = {}
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, scan)
for i = 1, #ids, 2 do
  if #started >= 2 * free then break end
  local id = ids[i]
  if redis.call('EXISTS', prefix .. id) == 0 then
    redis.call('PSETEX', prefix .. id, ttl, owner)
    table.insert(started, id)
    table.insert(started, ids[i + 1])
  end
end
return started
"""

# A job's keys besides its queue entry, deleted when it is done (arq's finish_job).
_JOB_KEYS = (in_progress_key_prefix, retry_key_prefix, job_key_prefix)


class BatchStartWorker(Worker):
    def __init__(self, *args: Any, owner: str = "1", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner
        # arq reads this many ids just to learn whether the queue has any: the
        # script below looks further itself.
        self._scan = max(self.queue_read_limit, self.max_jobs * 4)
        self.queue_read_limit = 1
        self._start_script: Any = None
        self._finishes: MicroBatcher[str, None] | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._start_script is None:
            self._start_script = self.pool.register_script(_START)
        args = [
            timestamp_ms(),
            int(self.in_progress_timeout_s * 1000),
            free,
            self._scan,
            in_progress_key_prefix,
            self._owner,
        ]
        started = await self._start_script(keys=[self.queue_name], args=args)
        for i in range(0, len(started), 2):
            job_id, score = started[i].decode(), int(float(started[i + 1]))
            running = self.tasks.get(job_id)
            await self.sem.acquire()
            self.job_counter += 1
            if running is not None and not running.done():
                # Redis lost the marker of a job this worker still runs (FLUSHDB, a
                # failover) and the job came back. Not twice at once: this start
                # waits for the run in flight. Dropping it instead would leave the
                # marker just set, held by a live worker, for its whole TTL (hours)
                # when the run in flight had already done its own Redis bookkeeping.
                log.warning("job %s is already running here: starts again once it ends", job_id)
                job = self._after(running, job_id, score)
            else:
                job = self.run_job(job_id, score)
            task = self.loop.create_task(job)
            task.add_done_callback(self._job_ended)
            self.tasks[job_id] = task

    async def _after(self, running: asyncio.Task[Any], job_id: str, score: int) -> None:
        """Runs the job once `running` (its run in flight here) has ended; the job
        then completes, or finds its own work done or gone."""
        try:
            await asyncio.wait({running})
        except asyncio.CancelledError:  # closing: the run in flight is no longer in `tasks`
            running.cancel()
            await asyncio.wait({running})
            raise
        await self.run_job(job_id, score)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        if not finish or result_data or keep_in_progress is not None:
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )
            return
        if self._finishes is None:
            self._finishes = MicroBatcher(self._finish_many, name="job ends", linger_s=0.0)
        await self._finishes.submit(job_id)

    async def _finish_many(self, job_ids: Sequence[str]) -> list[None]:
        """What arq's finish_job does for a job done with no result kept, for
        many jobs in one transaction: its marker, retry count and job gone, and
        it leaves the queue (and the abort set)."""
        keys = [prefix + j for j in job_ids for prefix in _JOB_KEYS]
        async with self.pool.pipeline(transaction=True) as tr:
            tr.delete(*keys)
            tr.zrem(abort_jobs_ss, *job_ids)
            tr.zrem(self.queue_name, *job_ids)
            await tr.execute()
        return [None] * len(job_ids)

    def _job_ended(self, _: object) -> None:
        """Frees the slot `start_jobs` took (what arq's own start does on completion)."""
        self.job_counter -= 1
        self.sem.release()

    async def close(self) -> None:
        """Cancels the jobs in flight and waits until each has ended, then arq's own
        close (health-check key, pool), which has no job left to gather."""
        self.handle_sig(signal.SIGUSR1)  # arq's close does this first; no signal is sent
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        await super().close()
