"""The batch progress display: counts kept per event, numbers that only move
forward and are true, and a long replay that renders quickly."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from rich.console import Console

from nex.collector.client import AsyncClient
from nex.collector.client._types import (
    BatchStatus,
    ProviderJob,
    ProviderJobProgress,
    RunCounts,
    RunEvent,
    RunStatus,
    TeacherBatch,
)
from nex.collector.client.progress import BatchProgress, watch_batch_progress

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def history(runs: int, *, seconds_per_run: float = 0.01) -> Iterator[RunEvent]:
    """Each run queued, running, completed; one run ends every `seconds_per_run`."""
    revision = 0
    for i in range(runs):
        revision += 1
        yield RunEvent(
            revision=revision, run_id=f"r{i}", batch_id="b1", status=RunStatus.QUEUED, time=T0
        )
    for i in range(runs):
        at = T0 + timedelta(seconds=(i + 1) * seconds_per_run)
        for status in (RunStatus.RUNNING, RunStatus.COMPLETED):
            revision += 1
            yield RunEvent(
                revision=revision, run_id=f"r{i}", batch_id="b1", status=status, attempt=1, time=at
            )


def snapshot(**counts: int) -> TeacherBatch:
    return TeacherBatch(
        id="b1",
        name="demo",
        template_id="tpl_1",
        provider="mock",
        model="mock-1",
        status=BatchStatus.RUNNING,
        counts=RunCounts(**counts),
    )


def test_counts_follow_each_run_to_its_latest_status() -> None:
    state = BatchProgress(batch=snapshot())
    events = list(history(3))
    for event in events[:5]:  # 3 queued, r0 running, r0 completed
        state.apply(event)
    assert state.counts == RunCounts(queued=2, completed=1, total=3)
    for event in events[5:]:
        state.apply(event)
    assert state.counts == RunCounts(completed=3, total=3)


def test_numbers_shown_never_go_backwards_while_history_replays() -> None:
    # The snapshot was read when 668 of 1,000 runs had ended; the replay then
    # starts from the batch's first event.
    runs, ended = 1000, 668
    state = BatchProgress(batch=snapshot(completed=ended, queued=runs - ended, total=runs))
    shown = [state.counts.done]
    for event in history(runs):
        state.apply(event)
        shown.append(state.counts.done)
    assert shown == sorted(shown), "the display went backwards"
    assert shown[0] == ended and shown[-1] == runs
    # Runs/s comes from the events alone: 1,000 runs ended over 10 s of server time.
    assert state.runs_per_second == pytest.approx(runs / (runs * 0.01 - 0.01), rel=0.01)


def test_runs_per_second_is_not_inflated_by_the_snapshot() -> None:
    state = BatchProgress(batch=snapshot(completed=900, total=1000))
    events = list(history(1000, seconds_per_run=0.1))
    for event in events[: 1000 + 2 * 10]:  # queued all, then 10 runs ended in 1 s
        state.apply(event)
    assert state.counts.done == 900  # the snapshot is the more recent truth
    rate = state.runs_per_second
    assert rate is not None and rate == pytest.approx(10 / 1.0, rel=0.01)


class ReplayingClient:
    """Stands in for the server side of `AsyncClient` with a finished batch."""

    def __init__(self, runs: int) -> None:
        self.runs = runs

    async def get_batch(self, batch_id: str) -> TeacherBatch:
        return snapshot(completed=self.runs, total=self.runs)

    async def watch_batch(
        self, batch_id: str, *, follow: bool = False, on_provider_job: object = None
    ) -> AsyncIterator[RunEvent]:
        for event in history(self.runs):
            yield event


@pytest.mark.timeout(60)  # a bound, not a benchmark: a quadratic display took minutes
async def test_a_100000_event_replay_renders_in_seconds() -> None:
    runs = 100_000 // 3 + 1  # three events per run
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    client = cast(AsyncClient, ReplayingClient(runs))
    batch = await watch_batch_progress(client, "b1", console, refresh_interval=0.05)
    assert batch.counts.completed == runs
    assert f"{runs}/{runs}" in out.getvalue()


def _job(i: int, state: str, done: int, failed: int = 0, total: int = 5000) -> ProviderJobProgress:
    return ProviderJobProgress(
        batch_id="b1",
        job=ProviderJob(
            id=f"pjb_{i}",
            teacher="openai",
            provider_job_id=f"batch_{i}",
            input_file_id=None,
            state=state,
            request_total=total,
            request_completed=done,
            request_failed=failed,
            submit_time=None,
            finish_time=None,
        ),
    )


def test_provider_jobs_show_their_latest_state_and_counts() -> None:
    state = BatchProgress(batch=snapshot())
    state.apply_job(_job(1, "validating", 0))
    state.apply_job(_job(1, "in_progress", 1200))
    assert state.job_lines() == ["provider job batch_1: in_progress 1200/5000"]
    state.apply_job(_job(1, "completed", 4990, failed=10))
    assert state.job_lines() == ["provider job batch_1: completed 5000/5000, 10 failed"]
    for i in range(2, 7):
        state.apply_job(_job(i, "in_progress", 10, total=100))
    lines = state.job_lines()
    assert lines[0] == "2 earlier provider jobs: 5010/5100" and len(lines) == 5
    out = io.StringIO()
    Console(file=out, width=60).print(*state.job_lines(), sep="\n")
    assert "provider job batch_6: in_progress 10/100" in out.getvalue()
