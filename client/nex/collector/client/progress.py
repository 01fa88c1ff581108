"""A live terminal progress display of a batch, fed by ``watch_batch``.

Optional: imports ``rich``. Run statuses come from the (resumable) event
stream; usage and cost, which events do not carry, are refreshed from
``get_batch`` every ``refresh_interval`` seconds. A run handed back to the
queue to wait for teacher capacity (a QUEUED event with error code
``THROTTLED``) shows as throttling, with the reason, until runs move again.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._async_client import AsyncClient
from ._errors import CollectorError
from ._types import BatchStatus, RunCounts, RunEvent, RunStatus, TeacherBatch

__all__ = ["THROTTLED", "BatchProgress", "watch_batch_progress"]

THROTTLED = "THROTTLED"
"""Error code of a QUEUED run event: the run waits for teacher capacity."""
# How long after its last THROTTLED event a batch still shows as throttled.
_THROTTLE_SHOWN = timedelta(seconds=5)

_STYLE = {
    RunStatus.QUEUED: "grey62",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
}


@dataclass
class BatchProgress:
    """What the display shows; fed with events and batch snapshots."""

    batch: TeacherBatch
    statuses: dict[str, RunStatus] = field(default_factory=dict)
    first_time: datetime | None = None
    last_done_time: datetime | None = None
    last_revision: int = 0
    throttled_runs: int = 0  # THROTTLED events seen (a run may wait more than once)
    last_throttle_time: datetime | None = None
    last_throttle: str = ""
    last_time: datetime | None = None

    def apply(self, event: RunEvent) -> None:
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
    def counts(self) -> RunCounts:
        """Per-status counts from the events, unless the batch snapshot knows more runs."""
        snap = self.batch.counts
        if len(self.statuses) < snap.total:
            return snap
        per = dict.fromkeys(RunStatus, 0)
        for status in self.statuses.values():
            per[status] += 1
        return RunCounts(
            queued=per[RunStatus.QUEUED],
            running=per[RunStatus.RUNNING],
            completed=per[RunStatus.COMPLETED],
            failed=per[RunStatus.FAILED],
            cancelled=per[RunStatus.CANCELLED],
            total=len(self.statuses),
        )

    @property
    def runs_per_second(self) -> float | None:
        """Ended runs per second of server time, from the first event to the last
        end (replayed history counts at its own pace)."""
        if self.first_time is None or self.last_done_time is None:
            return None
        span = (self.last_done_time - self.first_time).total_seconds()
        return self.counts.done / span if span > 0 else None

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
        if self.throttled:
            reason = self.last_throttle.split(";")[0]
            table.add_row(f"[yellow]throttled[/] {self.throttled_runs:,} waits", reason)
        return table


def _render(progress: Progress, state: BatchProgress) -> RenderableType:
    return Group(progress, state.summary())


async def watch_batch_progress(
    client: AsyncClient,
    batch_id: str,
    console: Console | None = None,
    *,
    follow: bool = False,
    refresh_interval: float = 1.0,
) -> TeacherBatch:
    """Shows a live progress bar of a batch (ended / total runs), its runs per
    status, runs/s, tokens and cost, until the batch watch ends; returns the
    final batch. The watch resumes by itself if the server restarts."""
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

    def redraw(live: Live) -> None:
        counts = state.counts
        progress.update(task, completed=counts.done, total=counts.total or None)
        live.update(_render(progress, state))

    async def refresh(live: Live) -> None:
        while True:
            await asyncio.sleep(refresh_interval)
            with contextlib.suppress(CollectorError):  # the watch handles outages
                state.batch = await client.get_batch(batch_id)
            redraw(live)

    with Live(_render(progress, state), console=console, refresh_per_second=8) as live:
        refresher = asyncio.create_task(refresh(live))
        try:
            async for event in client.watch_batch(batch_id, follow=follow):
                state.apply(event)
                redraw(live)
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        state.batch = await client.get_batch(batch_id)
        redraw(live)
    if state.batch.status == BatchStatus.CANCELLED:
        console.print(f"[yellow]batch {batch_id} was cancelled")
    return state.batch
