"""What the reconciler does with the runs of a worker whose heartbeat expired:
a stored answer is completed, never asked for again; a run that keeps losing
its workers ends, with a message saying so."""

from __future__ import annotations

import time

from nex.collector.client import Client, GenerationParams, RunStatus, TeacherRun
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.db import execute, fetch_all

_DEAD = "gone-host:1:deadbeef"  # a worker with no heartbeat row


def _finished(client: Client, run_id: str, timeout: float = 30) -> TeacherRun:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get_run(run_id)
        if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def _completed_runs(client: Client, n: int) -> list[TeacherRun]:
    template = client.create_template(unique("rs"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("rs"), template.id, "openai", "gpt-4o-mini", params=GenerationParams(max_tokens=8)
    )
    runs = client.create_runs(batch.id, [{"x": unique("v")} for _ in range(n)])
    return [_finished(client, r.id) for r in runs]


def test_a_dead_workers_stored_answer_is_completed_not_asked_again(
    client: Client, collector: CollectorEnvironment, fresh_teacher_api: FakeTeacherAPI
) -> None:
    (run,) = _completed_runs(client, 1)
    assert run.status == RunStatus.COMPLETED
    # As if its worker died between storing the answer and completing the run.
    execute(
        collector,
        "UPDATE runs SET status = 'running', end_time = NULL, worker_id = $2, "
        "answer_time = now() WHERE id = $1",
        run.id,
        _DEAD,
    )
    fresh_teacher_api.reset()
    again = _finished(client, run.id)
    assert again.status == RunStatus.COMPLETED
    assert again.output_text == run.output_text and again.attempt == run.attempt
    assert fresh_teacher_api.total_requests == 0
    (event,) = [e for e in client.watch_run(run.id, after_revision=0)][-1:]
    assert event.status == RunStatus.COMPLETED


def test_a_run_that_keeps_losing_workers_ends_as_worker_lost(
    client: Client, collector: CollectorEnvironment
) -> None:
    lost, requeued = _completed_runs(client, 2)
    for run, losses in ((lost, 9), (requeued, 3)):  # MAX_WORKER_LOSSES defaults to 10
        execute(
            collector,
            "UPDATE runs SET status = 'running', end_time = NULL, worker_id = $2, "
            "answer_time = NULL, output_text = NULL, lost_count = $3, teacher_failures = 2 "
            "WHERE id = $1",
            run.id,
            _DEAD,
            losses,
        )
    failed = _finished(client, lost.id)
    assert failed.status == RunStatus.FAILED and failed.error is not None
    assert failed.error.code == "WORKER_LOST"
    assert failed.error.message.startswith("worker lost 10 times"), failed.error.message
    assert "teacher failed 2 times" in failed.error.message
    again = _finished(client, requeued.id)  # one more loss counted, then run again
    assert again.status == RunStatus.COMPLETED and again.attempt == requeued.attempt + 1
    (row,) = fetch_all(collector, "SELECT lost_count FROM runs WHERE id = $1", requeued.id)
    assert row["lost_count"] == 4
