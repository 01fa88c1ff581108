"""The progress display says when a batch waits for teacher capacity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rich.console import Console

from nex.collector.client import RunError, RunEvent, RunStatus, TeacherBatch
from nex.collector.client.progress import THROTTLED, BatchProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _event(rev: int, status: RunStatus, seconds: float, error: RunError | None = None) -> RunEvent:
    return RunEvent(
        revision=rev,
        run_id=f"run_{rev}",
        batch_id="bat_1",
        status=status,
        attempt=0,
        error=error,
        time=T0 + timedelta(seconds=seconds),
    )


def _text(state: BatchProgress) -> str:
    console = Console(width=200, record=True)
    console.print(state.summary())
    return console.export_text()


def test_throttled_runs_show_until_runs_move_again() -> None:
    state = BatchProgress(
        batch=TeacherBatch(id="bat_1", name="b", template_id="t", provider="p", model="m")
    )
    state.apply(_event(1, RunStatus.RUNNING, 0))
    assert not state.throttled
    waiting = RunError(
        code=THROTTLED, message="waiting for teacher 'p' capacity (requests); next try in 2.0s"
    )
    state.apply(_event(2, RunStatus.QUEUED, 1, waiting))
    assert state.throttled
    assert "throttled" in _text(state) and "capacity (requests)" in _text(state)
    state.apply(_event(3, RunStatus.COMPLETED, 10))
    assert not state.throttled
    assert "throttled" not in _text(state)
