"""WatchRuns: replay the stored event log after a revision, then follow live events.

PostgreSQL NOTIFY (sent in the transaction that appends events) wakes every
server process. In each process, one feed per watched batch reads the new
events once per wake-up (a burst of commits coalesced into one read) and keeps
the latest ones in a bounded buffer shared by all the batch's watchers, each at
its own position. A watcher first replays the stored log from the table (its
own paged reads) until it reaches the feed's buffer, then reads from the buffer
only. One that falls behind the buffer's oldest event (it reads more slowly
than events come) is ended with ABORTED and resumes by revision: it never holds
the others back and costs no memory beyond the shared buffer. The log itself is
always read from the table, so a missed notification costs at most one
heartbeat interval, never an event.

A batch watch of a batch run through provider batch jobs also gets each job's
progress (state, request counts): not events of the log but snapshots, which
the feed reads with the events (just before them, in the same read) and keeps,
the latest per job. A watcher sends a job's snapshot once it has sent every
event the feed had read along with it, so a snapshot comes after every event
committed before it was read. A watcher sends the latest snapshot of each job
as it reaches the live events (so a resumed watch gets them again), then each
change; a watch of a batch that has ended gets each job's final snapshot
before it ends."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nex.collector.server.db.event_hub import EventHub
from nex.collector.server.db.uow import DB_DOWN, UnitOfWorkFactory
from nex.collector.server.domain.batches import ProviderJobView
from nex.collector.server.domain.errors import Aborted, Unavailable, Violations, require
from nex.collector.server.domain.runs import RunEvent
from nex.collector.server.domain.validation import check_id

log = logging.getLogger(__name__)

_PAGE = 1000
_COALESCE_S = 0.05
# Each watcher costs one message per read of the feed, so a crowd of watchers
# waits a little longer between reads (50 ms per 100 watchers, at most 0.5 s):
# fewer, larger messages, for the same events.
_WATCHERS_PER_COALESCE = 100
_MAX_COALESCE_S = 0.5
# Most buffer entries a run watch scans for its run before it lets others run.
_SCAN = 4096
# A provider job is marked ingested or abandoned just after its last run ends
# (its NOTIFY wakes the feed again): a watch of an ended batch waits for that,
# so that it ends with each job's final state; for at most this long, should
# the process marking it have died.
_JOBS_SETTLE_S = 10.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(slots=True)
class Entry:
    """One event as the watchers get it. `wire` is free for the API layer to keep
    the event's encoding in, made once and shared by every watcher of the feed."""

    event: RunEvent
    wire: bytes | None = None


@dataclass(slots=True)
class JobEntry:
    """The latest progress of one provider job, as the feed read it: `seq`
    numbers the feed's changes; `head` is the feed's head after the read that
    found it (it is sent after the events up to there). `wire` is for the API
    layer, as in Entry."""

    batch_id: str
    job: ProviderJobView
    seq: int = 0
    head: int = 0
    wire: bytes | None = None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """Provider jobs whose progress changed, for a batch watch."""

    jobs: list[JobEntry]


class _Feed:
    """The live events of one batch in this process, read once per wake-up and
    kept in a bounded buffer: `entries[start:]` holds every event of the batch
    with `floor < revision <= head`, in revision order."""

    def __init__(self, batch_id: str, capacity: int) -> None:
        self.batch_id = batch_id
        self.capacity = capacity
        self.revisions: list[int] = []
        self.entries: list[Entry] = []
        self.start = 0
        self.floor = -1  # not started: no watcher may read the buffer yet
        self.head = -1
        # `head` at the end of read number `done_seq`, which had found no queued
        # or running run (checked before reading); None when it found some.
        self.done_at: int | None = None
        self.done_seq = 0
        self.reads = 0
        self.changed = asyncio.Event()  # replaced by a new one at each change
        self.watchers = 0
        self.want_done = 0  # watchers that end when the batch has no active run
        self.task: asyncio.Task[None] | None = None
        self.starting = asyncio.Lock()
        # Provider jobs (read only while a watcher wants them): the latest of each.
        self.track_jobs = False
        self.jobs: dict[str, JobEntry] = {}
        self.jobs_seq = 0
        self.jobs_unsettled_since: float | None = None  # done, but a job not final yet

    def settled(self, done: bool, jobs: list[ProviderJobView] | None) -> bool:
        """`done` (no active run), once every job is final too, or after
        _JOBS_SETTLE_S of waiting for that."""
        if not done or not jobs or all(j.final for j in jobs):
            self.jobs_unsettled_since = None
            return done
        now = asyncio.get_running_loop().time()
        if self.jobs_unsettled_since is None:
            self.jobs_unsettled_since = now
        return now - self.jobs_unsettled_since >= _JOBS_SETTLE_S

    def update_jobs(self, views: list[ProviderJobView]) -> None:
        for view in views:
            known = self.jobs.get(view.id)
            if known is None or known.job != view:
                self.jobs_seq += 1
                self.jobs[view.id] = JobEntry(self.batch_id, view, self.jobs_seq, self.head)

    def due_jobs(self, sent: dict[str, int], pos: int) -> list[JobEntry]:
        """Job snapshots a watcher at `pos` has not sent and may send now."""
        if not self.jobs:
            return []
        due = [e for e in self.jobs.values() if e.seq > sent.get(e.job.id, 0) and e.head <= pos]
        for e in due:
            sent[e.job.id] = e.seq
        return due

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def append(self, events: list[RunEvent]) -> None:
        for event in events:
            if event.revision > self.head:
                self.revisions.append(event.revision)
                self.entries.append(Entry(event))
                self.head = event.revision
        excess = len(self.entries) - self.start - self.capacity
        if excess > 0:
            self.start += excess
            self.floor = self.revisions[self.start - 1]
            if self.start >= self.capacity:  # drop the dead prefix, amortised
                del self.revisions[: self.start], self.entries[: self.start]
                self.start = 0


class RunWatcher:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        hub: EventHub,
        *,
        heartbeat_s: float,
        buffer_events: int = 10_000,
        coalesce_s: float = _COALESCE_S,
    ) -> None:
        self._uow = uow
        self._hub = hub
        self._heartbeat = heartbeat_s
        self._capacity = buffer_events
        self._coalesce = coalesce_s
        self._closing = asyncio.Event()
        self._feeds: dict[str, _Feed] = {}

    def close(self) -> None:
        """Ends every open watch with UNAVAILABLE, so clients resume elsewhere now
        rather than when the server's grace period runs out."""
        self._closing.set()
        for feed in self._feeds.values():
            feed.notify()

    async def aclose(self) -> None:
        """Stops the feeds' readers (at shutdown, after the server stopped)."""
        self.close()
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ feeds

    async def _join(self, batch_id: str, *, want_done: bool, want_jobs: bool) -> _Feed:
        feed = self._feeds.get(batch_id)
        if feed is None:
            feed = self._feeds[batch_id] = _Feed(batch_id, self._capacity)
        feed.track_jobs = feed.track_jobs or want_jobs
        feed.watchers += 1
        feed.want_done += want_done
        try:
            async with feed.starting:
                if feed.task is None:
                    async with self._uow() as tx:
                        # Every event committed later has a larger revision.
                        top = await tx.events.last_revision()
                    feed.floor = feed.head = top
                    feed.task = asyncio.create_task(
                        self._follow(feed), name=f"watch-feed-{batch_id}"
                    )
        except BaseException:
            self._leave(feed, want_done=want_done)
            raise
        return feed

    def _leave(self, feed: _Feed, *, want_done: bool) -> None:
        feed.watchers -= 1
        feed.want_done -= want_done
        if feed.watchers == 0 and self._feeds.get(feed.batch_id) is feed:
            del self._feeds[feed.batch_id]
            if feed.task is not None:
                feed.task.cancel()  # it holds no reference to a watcher; ends at once

    async def _follow(self, feed: _Feed) -> None:
        """The feed's one reader: reads what is new, then waits for a
        notification (or a heartbeat interval, in case one was missed)."""
        with self._hub.subscribe(feed.batch_id) as wakeup:
            while True:
                wakeup.clear()
                try:
                    await self._read(feed)
                except DB_DOWN as exc:
                    # Expected while PostgreSQL restarts; the watchers keep waiting.
                    log.warning("watch feed of batch %s cannot read (%s)", feed.batch_id, exc)
                    await asyncio.sleep(1)
                    continue
                except Exception:  # a bug: logged with its traceback, then retried
                    log.exception("watch feed of batch %s cannot read", feed.batch_id)
                    await asyncio.sleep(1)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat):
                        await wakeup.wait()
                # Let a burst of commits land, so a busy batch costs one read
                # per interval rather than one per transaction.
                crowd = max(1.0, feed.watchers / _WATCHERS_PER_COALESCE)
                await asyncio.sleep(
                    max(self._coalesce, min(_MAX_COALESCE_S, self._coalesce * crowd))
                )

    async def _read(self, feed: _Feed) -> None:
        feed.reads += 1
        seq = feed.reads
        check = feed.want_done > 0
        done = False
        jobs: list[ProviderJobView] | None = None
        while True:
            async with self._uow() as tx:
                # Check for unfinished work *before* reading events, so that an
                # event committed after the check is still read below.
                if check:
                    done = await tx.runs.active_count(feed.batch_id) == 0
                if jobs is None and feed.track_jobs:  # before the events, as `done`
                    jobs = await tx.provider_jobs.of_batch(feed.batch_id)
                events = await tx.events.after(
                    revision=feed.head, batch_id=feed.batch_id, limit=_PAGE
                )
            feed.append(events)
            if len(events) < _PAGE:
                if feed.want_done > 0:  # not `check`: that is False after a first page
                    done = feed.settled(done, jobs)
                    feed.done_at, feed.done_seq = (feed.head if done else None), seq
                if jobs is not None:  # sent after every event read with them
                    feed.update_jobs(jobs)
                feed.notify()
                return
            feed.notify()
            check = False  # `done` was checked before the first page: it still holds

    # ---------------------------------------------------------------- watches

    async def watch(
        self,
        *,
        batch_id: str,
        run_id: str,
        after_revision: int,
        follow: bool,
        max_events: int = 1,
    ) -> AsyncIterator[list[Entry] | JobProgress | Heartbeat]:
        """Yields the events after `after_revision` in revision order, at most
        `max_events` at a time, and a Heartbeat when idle for a while; on a
        batch watch of a batch with provider jobs, their progress too."""
        v = Violations()
        if bool(batch_id) == bool(run_id):
            v.add("target", "set exactly one of batch_id and run_id")
        if after_revision < 0:
            v.add("after_revision", "must not be negative")
        if max_events < 0:
            v.add("max_events_per_message", "must not be negative")
        check_id(v, "batch_id", batch_id, required=False)
        check_id(v, "run_id", run_id, required=False)
        v.raise_if_any()
        max_events = max(1, max_events)
        async with self._uow() as tx:
            if run_id:
                run = require(await tx.runs.get(run_id, full=False), "run", run_id)
                batch_id = run.batch_id
                want_jobs = False
            else:
                batch = require(await tx.batches.get(batch_id), "batch", batch_id)
                want_jobs = batch.execution_mode.via_provider
        want_done = not run_id and not follow
        feed = await self._join(batch_id, want_done=want_done, want_jobs=want_jobs)
        try:
            async for item in self._watch(
                feed, run_id, after_revision, follow, max_events, want_jobs
            ):
                yield item
        finally:
            self._leave(feed, want_done=want_done)

    async def _watch(
        self, feed: _Feed, run_id: str, after: int, follow: bool, most: int, want_jobs: bool
    ) -> AsyncIterator[list[Entry] | JobProgress | Heartbeat]:
        # `pos`: every event of the target up to it has been delivered;
        # `last`: the last revision delivered (what a resumed watch passes).
        pos = last = after
        sent: dict[str, int] = {}  # provider job id -> the feed's seq of it sent
        # Replay from the table until the feed's buffer holds what comes next.
        while True:
            if self._closing.is_set():
                raise self._shutting_down()
            since = feed.reads  # a feed read after this one checks `done` later than we do
            async with self._uow() as tx:
                if run_id:
                    status = await tx.runs.status_of(run_id)
                    done = status is not None and status.terminal
                else:
                    done = not follow and await tx.runs.active_count(feed.batch_id) == 0
                # An ended batch's watch ends below: its jobs' final progress.
                final = await tx.provider_jobs.of_batch(feed.batch_id) if want_jobs and done else []
                if final and not all(j.final for j in final):
                    done = False  # live, until the feed finds them final (see _read)
                # Read before the page: the page then holds every event up to it.
                top = await tx.events.last_revision()
                events = await tx.events.after(
                    revision=pos, batch_id=feed.batch_id, run_id=run_id, limit=_PAGE
                )
            for i in range(0, len(events), most):
                chunk = events[i : i + most]
                if run_id:
                    end = next((k for k, e in enumerate(chunk) if e.status.terminal), None)
                    if end is not None:
                        yield [Entry(e) for e in chunk[: end + 1]]
                        return  # nothing follows a run's terminal event
                yield [Entry(e) for e in chunk]
                pos = last = chunk[-1].revision
            if len(events) == _PAGE:
                continue  # more to replay
            pos = max(pos, top)
            if done:
                if final:
                    yield JobProgress([JobEntry(feed.batch_id, job) for job in final])
                return
            if pos >= feed.floor:
                break
            # The buffer moved past what we have: read on from the table.
        # Live: from the feed's buffer only.
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while True:
            changed = feed.changed
            if self._closing.is_set():
                raise self._shutting_down()
            if pos < feed.floor:
                raise Aborted(
                    f"this watch fell more than {feed.capacity} events behind the live "
                    f"events; resume it after revision {last}",
                    reason="WATCH_TOO_SLOW",
                    metadata={"resume_after_revision": str(last)},
                    retry_after_s=0.1,
                )
            if want_jobs and (jobs := feed.due_jobs(sent, pos)):
                yield JobProgress(jobs)
                quiet_since = loop.time()
                continue
            i = bisect.bisect_right(feed.revisions, pos, feed.start)
            if i < len(feed.entries):
                if run_id:
                    end = min(len(feed.entries), i + _SCAN)
                    taken: list[Entry] = []
                    for k in range(i, end):
                        entry = feed.entries[k]
                        if entry.event.run_id == run_id:
                            taken.append(entry)
                            if entry.event.status.terminal or len(taken) == most:
                                end = k + 1
                                break
                    pos = feed.revisions[end - 1]
                    if not taken:
                        await asyncio.sleep(0)
                        continue
                else:
                    taken = feed.entries[i : i + most]
                    pos = taken[-1].event.revision
                last = taken[-1].event.revision
                yield taken
                quiet_since = loop.time()
                if run_id and taken[-1].event.status.terminal:
                    return
                continue
            pos = max(pos, feed.head)
            if (
                not follow
                and not run_id
                and feed.done_at is not None
                and feed.done_seq > since
                and pos <= feed.done_at
            ):
                if want_jobs and (jobs := feed.due_jobs(sent, pos)):
                    yield JobProgress(jobs)
                return
            try:
                # A run watch may wake often for others' events: the heartbeat
                # counts from what it last sent, not from the last wake-up.
                async with asyncio.timeout_at(quiet_since + self._heartbeat):
                    await changed.wait()
            except TimeoutError:
                yield Heartbeat()
                quiet_since = loop.time()

    @staticmethod
    def _shutting_down() -> Unavailable:
        return Unavailable("the server is shutting down; resume the watch", reason="SHUTTING_DOWN")
