"""arq's Worker, starting jobs in one Redis round trip per poll.

arq's own `start_jobs` checks and marks each job with ~4 sequential round
trips, and the queue's head keeps the jobs already running, so a busy worker
spends its time re-checking them: starts cap near a hundred jobs a second. This
does the same checks and marks (same keys, same semantics) in one Lua script."""

from __future__ import annotations

from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

# KEYS[1] = queue. ARGV = now_ms, in-progress ttl ms, how many to start, prefix, ids…
_START = """
local now, ttl, limit, prefix = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4]
local started = {}
for i = 5, #ARGV do
  if #started >= 2 * limit then break end
  local id = ARGV[i]
  if redis.call('EXISTS', prefix .. id) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= now then
      redis.call('PSETEX', prefix .. id, ttl, '1')
      table.insert(started, id)
      table.insert(started, score)
    end
  end
end
return started
"""


class BatchStartWorker(Worker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start_script: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._start_script is None:
            self._start_script = self.pool.register_script(_START)
        args: list[Any] = [
            timestamp_ms(),
            int(self.in_progress_timeout_s * 1000),
            free,
            in_progress_key_prefix,
            *job_ids,
        ]
        started = await self._start_script(keys=[self.queue_name], args=args)
        for i in range(0, len(started), 2):
            job_id, score = started[i].decode(), int(float(started[i + 1]))
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task
