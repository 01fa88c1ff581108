"""A live terminal progress display of a batch, fed by ``watch_batch``.

Optional: imports ``rich``. Run statuses come from the (resumable) event
stream; usage and cost, which events do not carry, are refreshed from
``get_batch`` every ``refresh_interval`` seconds. A run handed back to the
queue to wait for teacher capacity (a QUEUED event with error code
``THROTTLED``) shows as throttling, with the reason, until runs move again.
A batch run through provider batch jobs shows each job's state and request
counts as the watch reports them ("provider job batch_…: in_progress 1200/5000").
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

try:
    from rich.console import Console, Group, RenderableType
    from rich.live import Live
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # the client installed without its `progress` extra
    raise ImportError(
        "nex.collector.client.progress needs rich: pip install 'nex-collector-client[progress]'",
        name=exc.name,
    ) from exc

from ._async_client import AsyncClient
from ._errors import CollectorError
from ._types import (
    BatchStatus,
    ProviderJobProgress,
    RunCounts,
    RunEvent,
    RunStatus,
    TeacherBatch,
)

__all__ = ["THROTTLED", "BatchProgress", "watch_batch_progress"]

THROTTLED = "THROTTLED"
"""Error code of a QUEUED run event: the run waits for teacher capacity."""
# How long after its last THROTTLED event a batch still shows as throttled.
_THROTTLE_SHOWN = timedelta(seconds=5)

# Provider jobs shown one per line; more are summed up on one.
_JOBS_SHOWN = 4

_STYLE = {
    RunStatus.QUEUED: "grey62",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
}


@dataclass
class BatchProgress:
    """What the display shows; fed with events and batch snapshots.

    Counts are kept per event in O(1). Two sources tell how far the batch is:
    the events seen so far (a replay starts at the batch's beginning) and the
    latest ``get_batch`` snapshot. Each is true as of some moment, and the one
    with more ended runs is the more recent, so showing that one keeps the
    numbers both true and monotonic while a long history replays."""

    batch: TeacherBatch
    statuses: dict[str, RunStatus] = field(default_factory=dict)
    first_time: datetime | None = None
    last_done_time: datetime | None = None
    last_revision: int = 0
    _per: dict[RunStatus, int] = field(default_factory=lambda: dict.fromkeys(RunStatus, 0))
    throttled_runs: int = 0  # THROTTLED events seen (a run may wait more than once)
    last_throttle_time: datetime | None = None
    last_throttle: str = ""
    last_time: datetime | None = None
    # Each provider job's latest progress, by the collector's job id.
    jobs: dict[str, ProviderJobProgress] = field(default_factory=dict)

    def apply_job(self, progress: ProviderJobProgress) -> None:
        self.jobs[progress.job.id] = progress

    def job_lines(self) -> list[str]:
        """``"provider job batch_…: in_progress 1200/5000"`` per job (the latest
        ones when there are many, the others summed up)."""
        jobs = list(self.jobs.values())
        lines = [
            f"provider job {p.job.provider_job_id or p.job.id}: {p.describe()}"
            for p in jobs[-_JOBS_SHOWN:]
        ]
        if len(jobs) > _JOBS_SHOWN:
            rest = jobs[:-_JOBS_SHOWN]
            done = sum(p.job.request_completed + p.job.request_failed for p in rest)
            total = sum(p.job.request_total for p in rest)
            lines.insert(0, f"{len(rest)} earlier provider jobs: {done}/{total}")
        return lines

    def apply(self, event: RunEvent) -> None:
        before = self.statuses.get(event.run_id)
        if before is not None:
            self._per[before] -= 1
        self._per[event.status] += 1
        self.statuses[event.run_id] = event.status
        self.last_revision = max(self.last_revision, event.revision)
        if event.time is not None and (self.last_time is None or event.time > self.last_time):
            self.last_time = event.time
        if event.status == RunStatus.QUEUED and event.error and event.error.code == THROTTLED:
            self.throttled_runs += 1
            self.last_throttle_time = event.time
            self.last_throttle = event.error.message
        if event.time is not None:
            if self.first_time is None or event.time < self.first_time:
                self.first_time = event.time
            if event.status.is_terminal and (
                self.last_done_time is None or event.time > self.last_done_time
            ):
                self.last_done_time = event.time

    @property
    def event_counts(self) -> RunCounts:
        """Per-status counts of the runs the events have shown so far."""
        per = self._per
        return RunCounts(
            queued=per[RunStatus.QUEUED],
            running=per[RunStatus.RUNNING],
            completed=per[RunStatus.COMPLETED],
            failed=per[RunStatus.FAILED],
            cancelled=per[RunStatus.CANCELLED],
            total=len(self.statuses),
        )

    @property
    def counts(self) -> RunCounts:
        """The more recent of the event counts and the batch snapshot."""
        events, snap = self.event_counts, self.batch.counts
        if (events.done, events.total) >= (snap.done, snap.total):
            return events
        return snap

    @property
    def runs_per_second(self) -> float | None:
        """Ended runs per second of server time, from the first event to the last
        end the events have shown (replayed history counts at its own pace)."""
        if self.first_time is None or self.last_done_time is None:
            return None
        span = (self.last_done_time - self.first_time).total_seconds()
        return self.event_counts.done / span if span > 0 else None

    @property
    def throttled(self) -> bool:
        """Whether runs are waiting for teacher capacity right now (a recent
        THROTTLED event, in the stream's own time)."""
        if self.last_throttle_time is None or self.last_time is None:
            return False
        return self.last_time - self.last_throttle_time <= _THROTTLE_SHOWN

    def summary(self) -> Table:
        counts, usage = self.counts, self.batch.usage
        table = Table.grid(padding=(0, 2))
        table.add_row(
            *(f"[{_STYLE[s]}]{s.name.lower()}[/] {getattr(counts, s.name.lower())}" for s in _STYLE)
        )
        rate = self.runs_per_second
        table.add_row(
            f"runs/s {rate:.1f}" if rate is not None else "runs/s -",
            f"tokens in {usage.input_tokens:,}",
            f"out {usage.output_tokens:,}",
            f"cost ${usage.cost_usd:,.4f}",
            f"status {self.batch.status.name.lower()}",
        )
        if (cap := self.batch.max_cost_usd) is not None:
            budget = self.batch.budget
            used = budget.spent_usd + budget.reserved_usd
            share = used / cap if cap > 0 else 1.0
            style = "red" if share >= 0.95 else "yellow" if share >= 0.8 else "green"
            table.add_row(
                f"[{style}]budget ${budget.spent_usd:,.4f} spent[/]",
                f"${budget.reserved_usd:,.4f} reserved",
                f"of cap ${cap:,.4f} ({share:.0%})",
                f"queued worst case ${budget.queued_worst_case_usd:,.4f}",
            )
        if (pause := self.batch.pause) is not None:
            table.add_row(f"[red]paused: {pause.reason}[/]", pause.message)
        if self.throttled:
            reason = self.last_throttle.split(";")[0]
            table.add_row(f"[yellow]throttled[/] {self.throttled_runs:,} waits", reason)
        return table


def _render(progress: Progress, state: BatchProgress) -> RenderableType:
    # Below the summary, not in its grid: a line each, at full width.
    return Group(progress, state.summary(), *(Text(line) for line in state.job_lines()))


async def watch_batch_progress(
    client: AsyncClient,
    batch_id: str,
    console: Console | None = None,
    *,
    follow: bool = False,
    refresh_interval: float = 1.0,
) -> TeacherBatch:
    """Shows a live progress bar of a batch (ended / total runs), its runs per
    status, runs/s, tokens, cost and spend against its cap, until the batch
    watch ends or (unless ``follow``) the batch is paused; returns the final
    batch. The watch resumes by itself if the server restarts."""
    console = console or Console()
    state = BatchProgress(batch=await client.get_batch(batch_id))
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task(state.batch.name or batch_id, total=state.batch.counts.total or None)

    def render() -> RenderableType:
        # Called by Live at its refresh rate, not per event: a replay of a
        # long history costs one dict update per event.
        counts = state.counts
        progress.update(task, completed=counts.done, total=counts.total or None)
        return _render(progress, state)

    async def follow_events() -> None:
        async for event in client.watch_batch(
            batch_id, follow=follow, on_provider_job=state.apply_job
        ):
            state.apply(event)

    async def refresh(watching: asyncio.Task[None]) -> None:
        while True:
            await asyncio.sleep(refresh_interval)
            with contextlib.suppress(CollectorError):  # the watch handles outages
                state.batch = await client.get_batch(batch_id)
            if state.batch.status == BatchStatus.PAUSED and not follow:
                watching.cancel()  # nothing moves until someone raises the cap
                return

    with Live(console=console, refresh_per_second=8, get_renderable=render) as live:
        watching = asyncio.create_task(follow_events())
        refresher = asyncio.create_task(refresh(watching))
        try:
            try:
                await watching
            except asyncio.CancelledError:
                if not refresher.done():  # not stopped for a pause: a Ctrl-C
                    raise
        finally:
            watching.cancel()
            refresher.cancel()
            for job in (watching, refresher):
                with contextlib.suppress(asyncio.CancelledError):
                    await job
        state.batch = await client.get_batch(batch_id)
        live.refresh()
    if state.batch.status == BatchStatus.CANCELLED:
        console.print(f"[yellow]batch {batch_id} was cancelled")
    if state.batch.status == BatchStatus.PAUSED:
        reason = state.batch.pause.reason if state.batch.pause else "paused"
        console.print(
            f"[red]batch {batch_id} is paused ({reason}); resume it with: "
            f"nex-collector batch update {batch_id} --max-cost-usd AMOUNT"
        )
    return state.batch
