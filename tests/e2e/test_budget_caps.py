"""Hard budget caps, with real parts: several real worker processes call the fake
teacher over HTTP at full concurrency, and the fake counts the money it billed."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf import field_mask_pb2

from nex.collector.client import (
    BatchStatus,
    Client,
    FailedPreconditionError,
    GenerationParams,
    InvalidArgumentError,
    RunStatus,
    TeacherBatch,
    connect,
)
from nex.collector.server.services.budgets import no_daily_caps
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import teacher_pb2
from nex.collector.v1 import teacher_service_pb2 as pb
from nex.collector.v1 import teacher_service_pb2_grpc as pb_grpc
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI, Scripted
from tests.support.backing import Backing
from tests.support.cli import invoke, no_traceback, printed_id
from tests.support.collector import collector_settings
from tests.support.db import execute
from tests.support.processes import WorkerProcess

MODEL = "gpt-4o-mini"  # priced in providers/pricing.py: $0.15 / $0.60 per 1M tokens
PRICE = (0.15, 0.60)
RUNS = 40
MAX_TOKENS = 16
WORKERS = 2


@pytest.fixture
def worker_env(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, tmp_path: Path
) -> dict[str, str]:
    env = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": own_backing.redis_url,
        "DATA_DIR": str(tmp_path / "data"),
        "RECONCILE_INTERVAL_S": "0.5",
        "WORKER_MAX_JOBS": "16",
        "RUN_LEASE_S": "3.0",
        "TEACHER_MAX_ATTEMPTS": "8",
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in teacher_settings(fresh_teacher_api).items()})
    return env


@pytest.fixture
def capped_client(
    worker_env: dict[str, str], own_backing: Backing, tmp_path: Path
) -> Iterator[Client]:
    """A collector that serves gRPC only, and worker processes, all started."""
    overrides = {k: v for k, v in worker_env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    settings = collector_settings(own_backing, tmp_path / "data", **overrides)
    with CollectorEnvironment(settings, work=False) as running:
        logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
        workers = [WorkerProcess(worker_env, log).start() for log in logs]
        try:
            deadline = time.monotonic() + 180
            while not all(log.exists() and b"ready" in log.read_bytes() for log in logs):
                assert time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.1)
            with connect(running.address, token=running.token) as client:
                yield client
        finally:
            for w in workers:
                w.stop()


def _wait_for(
    client: Client, batch_id: str, status: BatchStatus, timeout: float = 60
) -> TeacherBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get_batch(batch_id)
        if batch.status == status:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch never {status.name}: {client.get_batch(batch_id)}")


def test_a_cap_is_never_passed_pauses_the_batch_and_raising_it_finishes(
    capped_client: Client, fresh_teacher_api: FakeTeacherAPI
) -> None:
    api, client = fresh_teacher_api, capped_client
    api.prices = {MODEL: PRICE}
    api.latency_s = 0.05
    template = client.create_template(unique("cap"), user_template="Say {{ x }}", variables=["x"])
    params = GenerationParams(max_tokens=MAX_TOKENS, top_logprobs=1)
    estimate = client.estimate_batch(
        template.id, "openai", MODEL, [{"x": f"item {i}"} for i in range(RUNS)], params=params
    )
    cap = estimate.worst_case_cost_usd * 0.3  # room for about a third of the runs
    batch = client.create_batch(
        unique("cap"), template.id, "openai", MODEL, params=params, max_cost_usd=cap
    )
    assert batch.max_cost_usd == pytest.approx(cap)
    client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(RUNS)])

    paused = _wait_for(client, batch.id, BatchStatus.PAUSED)
    assert api.spent_usd <= cap  # the teacher's own bill
    assert paused.pause is not None and paused.pause.reason == "BUDGET_EXHAUSTED"
    c = paused.counts
    assert (c.running, c.failed, c.completed + c.queued) == (0, 0, RUNS)
    assert 0 < c.completed < RUNS
    assert paused.budget.spent_usd == pytest.approx(paused.usage.cost_usd)
    assert paused.budget.spent_usd <= cap and paused.budget.reserved_usd == pytest.approx(0)
    assert paused.budget.queued_worst_case_usd > 0
    queued = list(client.list_runs(batch.id, status=RunStatus.QUEUED))
    assert len(queued) == c.queued and all(r.attempt == 0 for r in queued)  # none used up
    # The stream says why nothing moves.
    for event in client.watch_batch(batch.id):
        if event.error is not None and event.error.code == "BUDGET_EXHAUSTED":
            assert event.status == RunStatus.QUEUED
            break
    # Paused means paused: no further call reaches the teacher.
    calls = api.total_requests
    time.sleep(1.5)
    assert api.total_requests == calls

    raised = client.update_batch(batch.id, max_cost_usd=1.0)
    assert raised.max_cost_usd == 1.0 and raised.pause is None
    done = _wait_for(client, batch.id, BatchStatus.COMPLETED)
    assert (done.counts.completed, done.counts.total) == (RUNS, RUNS)
    assert done.budget.spent_usd == pytest.approx(done.usage.cost_usd)
    assert api.spent_usd == pytest.approx(done.usage.cost_usd)
    assert all(r.attempt == 1 for r in client.list_runs(batch.id))


def _dollar_batch(client: Client) -> TeacherBatch:
    """A batch capped at $1: far more than its calls cost, so it never pauses."""
    template = client.create_template(unique("k"), user_template="Say {{ x }}", variables=["x"])
    return client.create_batch(
        unique("k"),
        template.id,
        "openai",
        MODEL,
        params=GenerationParams(max_tokens=MAX_TOKENS),
        max_cost_usd=1.0,
    )


def test_a_killed_worker_leaks_no_reservation_and_its_calls_count(
    worker_env: dict[str, str],
    own_backing: Backing,
    fresh_teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    """A worker killed mid-call leaves reservations behind; the reconciler charges
    them at their worst case when it takes the runs back (the provider may have
    billed those calls), so the books never count less than the teacher's bill."""
    api = fresh_teacher_api
    api.prices = {MODEL: PRICE}
    api.latency_s = 0.5
    # Five calls stall at the teacher, so the kill always finds calls in flight
    # with no answer (answers are stored within milliseconds of arriving).
    api.script(*[Scripted() for _ in range(5)], *[Scripted(delay_s=60) for _ in range(5)])
    overrides = {k: v for k, v in worker_env.items() if k not in ("DATABASE_URL", "DATA_DIR")}
    settings = collector_settings(own_backing, tmp_path / "data", **overrides)
    with (
        CollectorEnvironment(settings, work=False) as running,
        connect(running.address, token=running.token) as client,
    ):
        batch = _dollar_batch(client)
        client.create_runs(batch.id, [{"x": f"item {i}"} for i in range(30)])
        first = WorkerProcess(worker_env, tmp_path / "first.log").start()
        try:
            deadline = time.monotonic() + 180
            while True:  # kill it mid-call: some runs done, some at the teacher
                b = client.get_batch(batch.id)
                if b.counts.completed >= 3 and b.budget.reserved_usd > 0:
                    break
                assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-2000:]
                time.sleep(0.05)
            first.kill9()
        finally:
            first.stop()
        second = WorkerProcess(worker_env, tmp_path / "second.log").start()
        try:
            done = _wait_for(client, batch.id, BatchStatus.COMPLETED, timeout=180)
        finally:
            second.stop()
    assert done.counts.completed == 30
    assert done.budget.reserved_usd == pytest.approx(0)  # nothing leaked
    assert done.budget.spent_usd > done.usage.cost_usd  # lost calls counted at worst case
    assert api.spent_usd <= done.budget.spent_usd + 1e-12  # never less than the bill


def test_a_call_that_timed_out_counts_at_its_worst_case(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    """The worker stops waiting (TEACHER_TIMEOUT_S) for a call the teacher got:
    the teacher still generates the answer and bills it, so the books count that
    call at its worst case, and never less than the teacher's bill."""
    api = fresh_teacher_api
    api.prices = {MODEL: PRICE}
    api.script(Scripted(delay_s=2.0))  # the first call outlasts the timeout
    settings = collector_settings(
        own_backing, tmp_path / "data", **{**teacher_settings(api), "TEACHER_TIMEOUT_S": 0.5}
    )
    with (
        CollectorEnvironment(settings) as running,
        connect(running.address, token=running.token) as client,
    ):
        batch = _dollar_batch(client)
        (run,) = client.create_runs(batch.id, [{"x": "item"}])
        done = _wait_for(client, batch.id, BatchStatus.COMPLETED)
        deadline = time.monotonic() + 30
        while api.spent_usd < 2 * done.usage.cost_usd * 0.999:  # the stalled call, billed too
            assert time.monotonic() < deadline, (api.spent_usd, done.usage.cost_usd)
            time.sleep(0.05)
        assert client.get_run(run.id).attempt == 2
    assert done.budget.reserved_usd == pytest.approx(0)
    assert done.budget.spent_usd > done.usage.cost_usd  # the timed-out call, at worst case
    assert api.spent_usd <= done.budget.spent_usd + 1e-12


def test_a_cap_needs_a_priced_model_and_max_tokens(client: Client) -> None:
    template = client.create_template(unique("cap"), user_template="Say {{ x }}", variables=["x"])
    with pytest.raises(FailedPreconditionError) as caught:
        client.create_batch(
            unique("cap"),
            template.id,
            "openai",
            "my-finetune-7b",
            params=GenerationParams(max_tokens=8),
            max_cost_usd=1.0,
        )
    assert caught.value.reason == "MODEL_NOT_PRICED" and "my-finetune-7b" in str(caught.value)
    with pytest.raises(InvalidArgumentError) as bad:
        client.create_batch(unique("cap"), template.id, "openai", MODEL, max_cost_usd=1.0)
    assert [v.field for v in bad.value.field_violations] == ["params.max_tokens"]
    with pytest.raises(InvalidArgumentError) as negative:
        client.create_batch(
            unique("cap"),
            template.id,
            "openai",
            MODEL,
            params=GenerationParams(max_tokens=8),
            max_cost_usd=-1.0,
        )
    assert [v.field for v in negative.value.field_violations] == ["max_cost_usd"]
    # A batch made without a cap cannot get one later on an unpriced model either.
    mock = client.create_batch(
        unique("cap"), template.id, "mock", "mock-1", params=GenerationParams(max_tokens=8)
    )
    with pytest.raises(FailedPreconditionError) as later:
        client.update_batch(mock.id, max_cost_usd=1.0)
    assert later.value.reason == "MODEL_NOT_PRICED"
    unbounded = client.create_batch(unique("cap"), template.id, "openai", MODEL)
    with pytest.raises(FailedPreconditionError) as no_bound:
        client.update_batch(unbounded.id, max_cost_usd=1.0)
    assert no_bound.value.reason == "MAX_TOKENS_REQUIRED" and "params.max_tokens" in str(
        no_bound.value
    )


def test_update_batch_names_bad_mask_paths(collector: CollectorEnvironment, client: Client) -> None:
    template = client.create_template(unique("cap"), user_template="Say {{ x }}", variables=["x"])
    batch = client.create_batch(
        unique("cap"), template.id, "openai", MODEL, params=GenerationParams(max_tokens=8)
    )
    with grpc.insecure_channel(collector.address) as channel:
        stub = pb_grpc.TeacherServiceStub(channel)
        md = (("authorization", f"Bearer {collector.token}"),)
        for paths in (["name"], []):
            with pytest.raises(grpc.RpcError) as caught:
                stub.UpdateBatch(
                    pb.UpdateBatchRequest(
                        batch=teacher_pb2.TeacherBatch(id=batch.id, name="x"),
                        update_mask=field_mask_pb2.FieldMask(paths=paths),
                    ),
                    metadata=md,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "update_mask" in (caught.value.details() or "")
        updated = stub.UpdateBatch(
            pb.UpdateBatchRequest(
                batch=teacher_pb2.TeacherBatch(id=batch.id, max_cost_usd=0.5),
                update_mask=field_mask_pb2.FieldMask(paths=["max_cost_usd"]),
            ),
            metadata=md,
        )
    assert updated.batch.max_cost_usd == 0.5
    assert client.get_batch(batch.id).budget.remaining_usd == pytest.approx(0.5)


def test_dry_run_prints_the_worst_case_and_creates_nothing(
    collector: CollectorEnvironment, client: Client, tmp_path: Path
) -> None:
    template = client.create_template(unique("dry"), user_template="Say {{ x }}", variables=["x"])
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_bytes(b"".join(orjson.dumps({"x": f"item {i}"}) + b"\n" for i in range(5)))
    before = sum(1 for _ in client.list_batches())
    result = invoke(
        collector,
        "batch", "create", "--template", template.id, "--inputs", str(inputs),
        "--provider", "openai", "--model", MODEL, "--max-tokens", "100", "--dry-run",
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "nothing was created" in result.output
    estimate = client.estimate_batch(
        template.id,
        "openai",
        MODEL,
        [{"x": f"item {i}"} for i in range(5)],
        params=GenerationParams(max_tokens=100),
    )
    # Five prompts of "Say item N" (10 bytes + role + overheads) and 5 x 100 output tokens.
    assert (estimate.runs, estimate.output_tokens_bound, estimate.priced) == (5, 500, True)
    assert estimate.prompt_tokens_bound >= sum(len(f"Say item {i}") for i in range(5))
    assert re.search(rf"\${estimate.worst_case_cost_usd:,.6f}", result.output), result.output
    assert sum(1 for _ in client.list_batches()) == before


def test_the_cli_shows_spend_against_the_cap_and_stops_on_a_pause(
    collector: CollectorEnvironment, client: Client, tmp_path: Path
) -> None:
    template = client.create_template(unique("cli"), user_template="Say {{ x }}", variables=["x"])
    rows = [{"x": f"item {i}"} for i in range(12)]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    params = GenerationParams(max_tokens=MAX_TOKENS)
    cap = client.estimate_batch(template.id, "openai", MODEL, rows, params=params)
    result = invoke(
        collector,
        "batch", "create", "--template", template.id, "--inputs", str(inputs),
        "--provider", "openai", "--model", MODEL, "--max-tokens", str(MAX_TOKENS),
        "--max-cost-usd", f"{cap.worst_case_cost_usd / 4:.10f}",
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "budget $" in result.output and "of cap $" in result.output
    batch_id = printed_id(result, "bat")
    assert f"nex-collector batch update {batch_id} --max-cost-usd" in result.output
    assert client.get_batch(batch_id).status == BatchStatus.PAUSED

    resumed = invoke(collector, "batch", "update", batch_id, "--max-cost-usd", "1")
    assert resumed.exit_code == 0, resumed.output
    assert _wait_for(client, batch_id, BatchStatus.COMPLETED).counts.completed == len(rows)


def test_a_daily_teacher_cap_pauses_every_batch_of_that_teacher_until_the_next_day(
    collector: CollectorEnvironment, client: Client, fresh_teacher_api: FakeTeacherAPI
) -> None:
    """The teachers file's `daily_max_cost_usd` reaches the budgets as a callable;
    here the test plugs one in. The cap holds across batches without caps of
    their own, and a batch paused by it resumes on the next UTC day."""
    model = "claude-haiku-4-5"  # $1 / $5 per 1M tokens
    fresh_teacher_api.prices = {model: (1.0, 5.0)}
    budgets = collector.container.teacher._budgets
    template = client.create_template(unique("day"), user_template="Say {{ x }}", variables=["x"])
    params = GenerationParams(max_tokens=MAX_TOKENS)
    rows = [{"x": f"item {i}"} for i in range(6)]
    worst = client.estimate_batch(template.id, "anthropic", model, rows, params=params)
    cap = {"anthropic": worst.worst_case_cost_usd / 2}
    budgets.daily_cap = cap.get
    try:
        batch = client.create_batch(unique("day"), template.id, "anthropic", model, params=params)
        client.create_runs(batch.id, rows)
        paused = _wait_for(client, batch.id, BatchStatus.PAUSED)
        assert paused.pause is not None and paused.pause.reason == "BUDGET_EXHAUSTED"
        assert paused.pause.metadata["scope"].startswith("teacher:anthropic:")
        assert 0 < paused.counts.completed < len(rows)
        assert fresh_teacher_api.spent_usd <= cap["anthropic"]

        # The next UTC day (a pause from yesterday), with room under the cap.
        cap["anthropic"] = 1.0
        execute(
            collector,
            "UPDATE batches SET pause_time = pause_time - interval '1 day' WHERE id = $1",
            batch.id,
        )
        done = _wait_for(client, batch.id, BatchStatus.COMPLETED)
        assert done.counts.completed == len(rows) and done.pause is None
    finally:
        budgets.daily_cap = no_daily_caps
