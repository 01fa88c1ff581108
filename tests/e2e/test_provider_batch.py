"""Provider Batch APIs end to end: batches in EXECUTION_MODE_PROVIDER_BATCH /
AUTO through the shipped client, a real collector and worker, and the fake
teacher's OpenAI Files + Batches and Anthropic Message Batches APIs at the
wire (through the official SDKs). The fake moves a job one state per poll,
and the collector polls every few milliseconds here, so nothing waits on a
clock."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from nex.collector.client import (
    BatchStatus,
    Client,
    ExecutionMode,
    FailedPreconditionError,
    GenerationParams,
    InvalidArgumentError,
    PromptTemplate,
    ProviderJobProgress,
    RunEvent,
    RunStatus,
    TeacherBatch,
    connect,
    connect_async,
)
from nex.collector.server.providers.batch_jobs import BatchBackends
from nex.collector.server.services.provider_jobs import ProviderJobs, ProviderJobSettings
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import TEACHER_KEY, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.cli import invoke, no_traceback
from tests.support.collector import collector_settings
from tests.support.db import fetch_all

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}


def _settings(backing: Backing, data: Path, api: FakeTeacherAPI, **more: Any) -> Any:
    return collector_settings(
        backing,
        data,
        OPENAI_API_KEY=TEACHER_KEY,
        OPENAI_BASE_URL=api.openai_base_url,
        ANTHROPIC_API_KEY=TEACHER_KEY,
        ANTHROPIC_BASE_URL=api.anthropic_base_url,
        TEACHER_TIMEOUT_S=5,
        PROVIDER_JOB_TICK_S=0.05,
        PROVIDER_JOB_POLL_S=0.02,
        PROVIDER_JOB_MAX_POLL_S=0.1,
        TEACHER_MAX_ATTEMPTS=3,
        **more,
    )


@pytest.fixture(scope="module")
def api() -> Iterator[FakeTeacherAPI]:
    fake = FakeTeacherAPI(api_key=TEACHER_KEY).start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(scope="module")
def collector(
    backing: Backing, api: FakeTeacherAPI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorEnvironment]:
    data = tmp_path_factory.mktemp("pbatch")
    teachers = data / "teachers.toml"
    # A local OpenAI-compatible server: no Batch API unless its entry says so.
    teachers.write_text(
        f'[teachers.local]\nkind = "openai-compatible"\nbase_url = "{api.openai_base_url}"\n'
    )
    with (
        backing.isolated() as own,
        CollectorEnvironment(_settings(own, data, api, TEACHERS_FILE=str(teachers))) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def client(collector: CollectorEnvironment) -> Iterator[Client]:
    with connect(collector.address, token=collector.token) as c:
        yield c


@pytest.fixture(autouse=True)
def _calm(api: FakeTeacherAPI) -> Iterator[None]:
    yield
    b = api.batches
    b.hold, b.expire, b.fail_status = False, 0, None
    b.error_prompts.clear()
    b.expire_prompts.clear()


@pytest.fixture
def template(client: Client) -> PromptTemplate:
    return client.create_template(
        unique("pb"), user_template="Explain {{ topic }}.", variables=["topic"]
    )


def _batch(
    client: Client,
    template: PromptTemplate,
    provider: str = "openai",
    mode: ExecutionMode = ExecutionMode.PROVIDER_BATCH,
    **kwargs: Any,
) -> TeacherBatch:
    return client.create_batch(
        unique("b"),
        template.id,
        provider,
        MODELS[provider],
        params=GenerationParams(top_logprobs=3, max_tokens=16),
        execution_mode=mode,
        **kwargs,
    )


def _topics(tag: str, n: int) -> list[dict[str, str]]:
    return [{"topic": f"{tag} {i}"} for i in range(n)]


def _wait(client: Client, batch_id: str) -> TeacherBatch:
    for _ in client.watch_batch(batch_id):
        pass
    return _settled(client, batch_id)


def _settled(client: Client, batch_id: str, timeout: float = 30) -> TeacherBatch:
    """The batch once its provider jobs are final too: a job is marked ingested
    or abandoned, with its cost, just after its last run ends."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get_batch(batch_id)
        if all(j.state in ("ingested", "abandoned") for j in batch.provider_jobs):
            return batch
        assert time.monotonic() < deadline, batch.provider_jobs
        time.sleep(0.05)


def test_a_whole_batch_through_openai_at_half_price(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    topics = _topics(unique("oa"), 10)
    online = _batch(client, template, mode=ExecutionMode.ONLINE)
    client.create_runs(online.id, topics)
    batch = _batch(client, template)
    assert batch.execution_mode is ExecutionMode.PROVIDER_BATCH
    runs = client.create_runs(batch.id, topics)

    events = list(client.watch_batch(batch.id))
    for run in runs:
        statuses = [e.status for e in events if e.run_id == run.id]
        assert statuses == [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED]
    done = _settled(client, batch.id)
    assert done.counts.completed == 10
    (job,) = done.provider_jobs
    assert job.state == "ingested" and job.request_total == 10 and job.request_completed == 10
    assert job.provider_job_id and job.provider_job_id.startswith("batch_")
    assert job.input_file_id and job.input_file_id.startswith("file-")

    # Stored exactly as an online call stores the same prompt, logprobs included.
    reference = _wait(client, online.id)
    by_topic = {r.variables["topic"]: client.get_run(r.id) for r in client.list_runs(online.id)}
    for run in client.list_runs(batch.id):
        got, want = client.get_run(run.id), by_topic[run.variables["topic"]]
        assert got.has_logprobs and got.tokens == want.tokens
        assert (got.output_text, got.finish_reason, got.usage.input_tokens) == (
            want.output_text,
            want.finish_reason,
            want.usage.input_tokens,
        )
        assert got.attempt == 1
    # Half the price, and the batch says what that saved.
    assert done.usage.cost_usd == pytest.approx(reference.usage.cost_usd / 2)
    assert done.usage.cost_usd > 0
    assert done.provider_batch_saved_usd == pytest.approx(done.usage.cost_usd)


def test_a_whole_batch_through_anthropic_without_logprobs(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    batch = _batch(client, template, "anthropic")
    runs = client.create_runs(batch.id, _topics(unique("an"), 6))
    done = _wait(client, batch.id)
    assert done.counts.completed == 6
    (job,) = done.provider_jobs
    assert job.provider_job_id and job.provider_job_id.startswith("msgbatch_")
    run = client.get_run(runs[0].id)
    assert run.output_text and not run.has_logprobs and run.tokens == ()
    assert done.provider_batch_saved_usd == pytest.approx(done.usage.cost_usd)


def test_provider_batch_on_a_teacher_without_one_is_refused(
    client: Client, template: PromptTemplate
) -> None:
    with pytest.raises(FailedPreconditionError, match="'local'") as err:
        client.create_batch(
            unique("b"), template.id, "local", "llama", execution_mode=ExecutionMode.AUTO
        )
    assert err.value.reason == "PROVIDER_BATCH_UNSUPPORTED"
    teachers = {t.name: t for t in client.list_teachers()}
    assert teachers["openai"].batch.supported and teachers["openai"].batch.price_factor == 0.5
    assert teachers["anthropic"].batch.max_requests == 100_000
    assert teachers["mock"].batch.supported and not teachers["local"].batch.supported


def test_errors_fail_with_the_providers_message_and_expiries_are_retried(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    tag = unique("er")
    topics = _topics(tag, 4)
    api.batches.error_prompts.add(f"Explain {tag} 0.")  # refused: not worth retrying
    api.batches.expire_prompts.add(f"Explain {tag} 1.")  # expires in every job
    batch = _batch(client, template)
    runs = client.create_runs(batch.id, topics)
    done = _wait(client, batch.id)
    assert (done.counts.completed, done.counts.failed) == (2, 2)
    refused, expired = client.get_run(runs[0].id), client.get_run(runs[1].id)
    assert refused.status is RunStatus.FAILED and refused.error is not None
    assert refused.error.code == "PROVIDER_BAD_REQUEST"
    assert refused.error.message == "this request was refused"
    assert expired.status is RunStatus.FAILED and expired.error is not None
    assert expired.attempt == 3  # TEACHER_MAX_ATTEMPTS, each in a job of its own
    assert "teacher failed 3 times" in expired.error.message
    assert "completion window expired" in expired.error.message
    assert len(done.provider_jobs) == 3


def test_an_expired_job_falls_back_online_before_the_deadline(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    api.batches.expire = 1  # the next job expires with half its requests done
    batch = _batch(client, template, mode=ExecutionMode.AUTO, deadline=timedelta(hours=6))
    assert batch.deadline_time is not None
    runs = client.create_runs(batch.id, _topics(unique("ex"), 8))
    done = _wait(client, batch.id)
    assert done.counts.completed == 8
    (job,) = done.provider_jobs
    assert job.state == "ingested" and job.request_completed == 4
    attempts = sorted(client.get_run(r.id).attempt for r in runs)
    assert attempts == [1, 1, 1, 1, 2, 2, 2, 2]  # the expired half went online


def test_cancel_cancels_the_provider_job_and_keeps_what_it_produced(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI, collector: CollectorEnvironment
) -> None:
    api.batches.hold = True
    batch = _batch(client, template)
    client.create_runs(batch.id, _topics(unique("cx"), 6))
    for event in client.watch_batch(batch.id):  # submitted: every run running
        if event.status is RunStatus.RUNNING and client.get_batch(batch.id).counts.running == 6:
            break
    client.cancel_batch(batch.id)
    done = _wait(client, batch.id)
    assert (done.counts.completed, done.counts.cancelled) == (3, 3)
    (job,) = done.provider_jobs
    assert job.state == "ingested"
    (provider_job,) = [j for j in api.batches.jobs.values() if j.id == job.provider_job_id]
    assert provider_job.state == "cancelled"


# -- crashes: a second process finishes what the first left, sending nothing twice


class Crash(Exception):
    pass


def _jobs(running: CollectorEnvironment, crash_at: str | None, chunk: int = 500) -> ProviderJobs:
    c = running.container

    def crash(point: str) -> None:
        if point == crash_at:
            raise Crash(point)

    from nex.collector.server.config import teacher_credentials

    backends = BatchBackends(c.teachers, lambda t: teacher_credentials(c.settings, t), timeout=5)
    return ProviderJobs(
        c.uow,
        c.executor,
        c.queue,
        c.teachers,
        backends.get,
        settings=ProviderJobSettings(
            poll_s=0,
            max_poll_s=0,
            lease=timedelta(0),
            max_attempts=3,
            ingest_chunk=chunk,
            settle=timedelta(0),
        ),
        crash_hook=crash,
    )


@pytest.mark.parametrize(
    ("provider", "crash_at"),
    [
        ("openai", "uploaded"),
        ("openai", "created"),
        ("openai", "ingesting"),
        ("anthropic", "created"),
    ],
)
def test_a_crash_anywhere_sends_nothing_twice_and_ingests_every_run_once(
    own_backing: Backing, api: FakeTeacherAPI, tmp_path: Path, provider: str, crash_at: str
) -> None:
    # No worker: the two "processes" below are the only ones driving the job.
    settings = _settings(own_backing, tmp_path, api)
    with (
        CollectorEnvironment(settings, work=False) as running,
        connect(running.address, token=running.token) as client,
    ):
        template = client.create_template(
            unique("cr"), user_template="Explain {{ topic }}.", variables=["topic"]
        )
        # An equal-sized job of ours already at the provider: never mistaken
        # for the lost one (Anthropic's jobs carry no marker).
        earlier = _batch(client, template, provider)
        client.create_runs(earlier.id, _topics(unique("cr"), 7))
        for _ in range(20):
            if client.get_batch(earlier.id).counts.completed == 7:
                break
            running.call(_jobs(running, None).tick())
        batch = _batch(client, template, provider)
        client.create_runs(batch.id, _topics(unique("cr"), 7))
        uploads, created = api.batches.uploads, api.batches.created[provider]

        with pytest.raises(Crash):
            for _ in range(20):
                running.call(_jobs(running, crash_at, chunk=3).tick())
        second = _jobs(running, None)
        for _ in range(20):
            if client.get_batch(batch.id).counts.completed == 7:
                break
            running.call(second.tick())

        done = _settled(client, batch.id)
        assert done.counts.completed == 7
        assert api.batches.uploads - uploads == (1 if provider == "openai" else 0)
        assert api.batches.created[provider] - created == 1
        (job,) = done.provider_jobs
        assert job.state == "ingested"
        completions = fetch_all(
            running,
            "SELECT run_id, count(*) AS n FROM run_events WHERE batch_id = $1 "
            "AND status = 'completed' GROUP BY run_id",
            batch.id,
        )
        assert len(completions) == 7 and all(r["n"] == 1 for r in completions)


def test_the_cli_creates_a_provider_batch_and_shows_its_jobs_and_saving(
    collector: CollectorEnvironment, client: Client, template: PromptTemplate, tmp_path: Path
) -> None:
    tag = unique("cli")
    inputs = tmp_path / "vars.jsonl"
    inputs.write_text("".join(f'{{"topic": "{tag} {i}"}}\n' for i in range(3)))
    created = invoke(
        collector,
        "batch", "create", "--template", template.id, "--inputs", str(inputs),
        "--provider", "openai", "--model", "gpt-4o-mini", "--top-logprobs", "2",
        "--mode", "provider-batch", "--deadline", "6h", "-q",
    )  # fmt: skip
    no_traceback(created)
    assert created.exit_code == 0, created.output
    batch_id = created.output.strip().splitlines()[-1]
    done = client.get_batch(batch_id)
    assert done.counts.completed == 3 and done.execution_mode is ExecutionMode.PROVIDER_BATCH
    assert done.deadline_time is not None
    assert all(client.get_run(r.id).has_logprobs for r in client.list_runs(batch_id))
    shown = invoke(collector, "batch", "show", batch_id)
    assert shown.exit_code == 0, shown.output
    assert "provider-batch" in shown.output and "ingested" in shown.output
    assert "saved" in shown.output and (done.provider_jobs[0].provider_job_id or "") in shown.output

    bad = invoke(
        collector,
        "batch", "create", "--template", template.id, "--inputs", str(inputs),
        "--provider", "local", "--model", "llama", "--mode", "provider-batch",
    )  # fmt: skip
    no_traceback(bad)
    assert bad.exit_code != 0 and "local" in bad.output
    assert "PROVIDER_BATCH_UNSUPPORTED" in bad.output

    listed = invoke(collector, "teachers")
    assert listed.exit_code == 0, listed.output
    assert "batchAPIat50%price" in "".join(listed.output.split())  # folded in 80 columns


def test_the_mock_teacher_has_an_offline_batch_api_and_the_demo_uses_it(
    collector: CollectorEnvironment, client: Client, template: PromptTemplate
) -> None:
    batch = client.create_batch(
        unique("b"),
        template.id,
        "mock",
        "mock-1",
        params=GenerationParams(top_logprobs=2, max_tokens=12),
        execution_mode=ExecutionMode.PROVIDER_BATCH,
    )
    runs = client.create_runs(batch.id, _topics(unique("mk"), 5))
    done = _wait(client, batch.id)
    assert done.counts.completed == 5
    (job,) = done.provider_jobs
    assert job.state == "ingested" and job.request_completed == 5
    assert job.provider_job_id == f"mockbatch-{job.id}"
    assert client.get_run(runs[0].id).has_logprobs

    result = invoke(collector, "demo", "--runs", "6", "--provider-batch")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert "demo complete" in result.output and "provider jobs" in result.output


def test_runs_are_split_into_jobs_within_the_teachers_limits(
    own_backing: Backing, api: FakeTeacherAPI, tmp_path: Path
) -> None:
    teachers = tmp_path / "teachers.toml"
    teachers.write_text(
        f"""
[teachers.cheap]
kind = "openai"
base_url = "{api.openai_base_url}"
api_key_env = "NEXC_PB_KEY"

[teachers.cheap.batch]
max_requests = 4
price_factor = 0.25
"""
    )
    api.batches.openai_max_requests = 4  # the provider refuses bigger jobs too
    os.environ["NEXC_PB_KEY"] = TEACHER_KEY
    try:
        settings = _settings(own_backing, tmp_path, api, TEACHERS_FILE=str(teachers))
        with (
            CollectorEnvironment(settings) as running,
            connect(running.address, token=running.token) as client,
        ):
            (cheap,) = [t for t in client.list_teachers() if t.name == "cheap"]
            assert (cheap.batch.supported, cheap.batch.max_requests) == (True, 4)
            template = client.create_template(
                unique("lim"), user_template="Explain {{ topic }}.", variables=["topic"]
            )
            batch = client.create_batch(
                unique("b"),
                template.id,
                "cheap",
                "gpt-4o-mini",
                params=GenerationParams(max_tokens=8),
                execution_mode=ExecutionMode.PROVIDER_BATCH,
            )
            client.create_runs(batch.id, _topics(unique("lim"), 10))
            done = _wait(client, batch.id)
            assert done.counts.completed == 10
            assert sorted(j.request_total for j in done.provider_jobs) == [2, 4, 4]
            assert done.provider_batch_saved_usd == pytest.approx(3 * done.usage.cost_usd)
    finally:
        os.environ.pop("NEXC_PB_KEY", None)
        api.batches.openai_max_requests = 50_000


def test_a_cost_cap_reserves_the_batch_price_and_pauses_until_raised(
    client: Client, template: PromptTemplate
) -> None:
    topics = _topics(unique("cap"), 6)
    params = GenerationParams(top_logprobs=3, max_tokens=16)
    online_worst = client.estimate_batch(
        template.id, "openai", MODELS["openai"], topics, params=params
    )
    per_request = online_worst.worst_case_cost_usd / 6 / 2  # at the batch price
    batch = _batch(client, template, max_cost_usd=per_request * 3.5)
    runs = client.create_runs(batch.id, topics)
    paused, refused = None, False
    for event in client.watch_batch(batch.id):
        refused = refused or (event.error is not None and event.error.code == "BUDGET_EXHAUSTED")
        # Paused once the first job's runs have ended too.
        if refused and (paused := client.get_batch(batch.id)).status is BatchStatus.PAUSED:
            break
    assert paused is not None and paused.status is BatchStatus.PAUSED
    assert (paused.counts.completed, paused.counts.queued) == (3, 3)
    assert paused.budget.spent_usd <= per_request * 3.5
    assert paused.budget.reserved_usd == pytest.approx(0, abs=1e-12)

    client.update_batch(batch.id, max_cost_usd=1.0)
    done = _wait(client, batch.id)
    assert done.counts.completed == 6
    assert done.budget.spent_usd == pytest.approx(done.usage.cost_usd)
    assert len(done.provider_jobs) == 2 and len(runs) == 6


def test_auto_cancels_a_job_not_done_by_the_deadline_and_goes_online(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    api.batches.hold = True  # the provider never finishes this job by itself
    # Due for the fallback two seconds from now (the margin is 30 minutes).
    deadline = datetime.now(UTC) + timedelta(minutes=30, seconds=2)
    batch = _batch(client, template, mode=ExecutionMode.AUTO, deadline=deadline)
    runs = client.create_runs(batch.id, _topics(unique("dl"), 6))
    done = _wait(client, batch.id)
    assert done.counts.completed == 6
    (job,) = done.provider_jobs
    (at_provider,) = [j for j in api.batches.jobs.values() if j.id == job.provider_job_id]
    assert at_provider.state == "cancelled" and job.state == "ingested"
    attempts = sorted(client.get_run(r.id).attempt for r in runs)
    assert attempts == [1, 1, 1, 2, 2, 2]  # what it produced kept; the rest online


def test_bad_modes_and_deadlines_are_named(client: Client, template: PromptTemplate) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        _batch(client, template, deadline=datetime(2000, 1, 1, tzinfo=UTC))
    assert [v.field for v in err.value.field_violations] == ["deadline_time"]
    with pytest.raises(InvalidArgumentError) as err:
        _batch(client, template, deadline=timedelta(days=400))
    assert [v.field for v in err.value.field_violations] == ["deadline_after"]
    with pytest.raises(InvalidArgumentError) as err:
        _batch(client, template, mode=7)  # type: ignore[arg-type]  # deliberately unknown
    assert [v.field for v in err.value.field_violations] == ["execution_mode"]


_STATE_ORDER = (
    *("preparing", "uploaded", "submitted", "validating", "in_progress"),
    *("finalizing", "completed", "ingested"),
)


async def test_a_batch_watch_shows_each_provider_jobs_progress_in_order(
    collector: CollectorEnvironment,
    client: Client,
    template: PromptTemplate,
    api: FakeTeacherAPI,
) -> None:
    api.batches.hold = True  # in progress until the watch has shown it so
    batch = _batch(client, template)
    runs = client.create_runs(batch.id, _topics(unique("pw"), 5))
    stream: list[RunEvent | ProviderJobProgress] = []

    def progress(p: ProviderJobProgress) -> None:
        stream.append(p)
        if p.job.state == "in_progress":
            api.batches.hold = False

    async with await connect_async(collector.address, token=collector.token) as aclient:
        async for event in aclient.watch_batch(batch.id, on_provider_job=progress):
            stream.append(event)
        # Old code paths are unchanged: without the callback, events only.
        plain = [e async for e in aclient.watch_batch(batch.id)]
        assert all(isinstance(e, RunEvent) for e in plain) and len(plain) == 15
        # A watch resumed after the last event gets each job's latest progress.
        resumed: list[ProviderJobProgress] = []
        late = [
            e
            async for e in aclient.watch_batch(
                batch.id, after_revision=plain[-1].revision, on_provider_job=resumed.append
            )
        ]
        assert late == []

    jobs = [p for p in stream if isinstance(p, ProviderJobProgress)]
    events = [e for e in stream if isinstance(e, RunEvent)]
    assert {p.job.id for p in jobs} == {j.id for j in client.get_batch(batch.id).provider_jobs}
    assert all(p.batch_id == batch.id and p.update_time is not None for p in jobs)
    states = [p.job.state for p in jobs]
    assert "in_progress" in states
    # Never backwards, each change once.
    ranks = [_STATE_ORDER.index(s) for s in states]
    assert ranks == sorted(ranks)
    assert len({(p.job.state, p.job.request_completed) for p in jobs}) == len(jobs)
    assert jobs[-1].job.state in ("completed", "ingested")
    assert jobs[-1].job.request_completed == 5 and jobs[-1].describe().endswith(" 5/5")
    # A progress comes after every event committed before it: the job and its
    # runs' RUNNING events are made in one transaction...
    first_job = stream.index(jobs[0])
    running = [
        i for i, e in enumerate(stream) if isinstance(e, RunEvent) and e.status is RunStatus.RUNNING
    ]
    assert len(running) == len(runs) and max(running) < first_job
    # ...and a job is ingested only once every result is stored.
    done = [i for i, e in enumerate(stream) if isinstance(e, RunEvent) and e.status.is_terminal]
    assert all(
        i > max(done) for i, p in enumerate(stream) if p in jobs and p.job.state == "ingested"
    )
    assert len(events) == 15
    (final,) = resumed
    assert final.job.state == "ingested" and final.job.request_completed == 5

    # The CLI's live progress shows it.
    watched = invoke(collector, "batch", "watch", batch.id)
    assert watched.exit_code == 0, watched.output
    job = client.get_batch(batch.id).provider_jobs[0]
    assert f"provider job {job.provider_job_id}: ingested 5/5" in watched.output, watched.output


def test_a_wrong_key_fails_the_job_and_its_runs_with_the_providers_error(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    batch = _batch(client, template)
    api.api_key = "sk-not-the-collectors-key"  # every call the collector makes is refused
    try:
        runs = client.create_runs(batch.id, _topics(unique("wk"), 3))
        seen: list[ProviderJobProgress] = []
        events = list(client.watch_batch(batch.id, on_provider_job=seen.append))
    finally:
        api.api_key = TEACHER_KEY
    done = _settled(client, batch.id)
    assert done.status is BatchStatus.COMPLETED or done.counts.failed == 3
    assert done.counts.failed == 3 and done.counts.done == 3
    for run in runs:
        failed = client.get_run(run.id)
        assert failed.status is RunStatus.FAILED
        assert failed.error is not None and failed.error.code == "PROVIDER_AUTH"
        assert "Incorrect API key" in failed.error.message
        assert TEACHER_KEY not in failed.error.message
        # A refused key is not worth retrying: one attempt, FAILED at once.
        assert [e.status for e in events if e.run_id == run.id][-1] is RunStatus.FAILED
    (job,) = done.provider_jobs
    assert job.state == "abandoned" and job.error is not None
    assert job.error.code == "PROVIDER_AUTH"
    assert seen and seen[-1].job.state == "abandoned"


def test_a_provider_that_stays_down_fails_the_runs_once_attempts_are_used_up(
    client: Client, template: PromptTemplate, api: FakeTeacherAPI
) -> None:
    batch = _batch(client, template)
    api.batches.fail_status = 503  # retryable, but it never comes back
    refused = api.batches.refused
    runs = client.create_runs(batch.id, _topics(unique("dn"), 2))
    seen: list[ProviderJobProgress] = []
    events = list(client.watch_batch(batch.id, on_provider_job=seen.append))
    done = _settled(client, batch.id)
    assert done.counts.failed == 2 and done.counts.done == 2
    # Each job is given up after PROVIDER_JOB_MAX_STEP_FAILURES (8) steps in a
    # row; its runs go to the next job until TEACHER_MAX_ATTEMPTS (3) are used.
    assert len(done.provider_jobs) == 3
    assert all(j.state == "abandoned" for j in done.provider_jobs)
    assert all(j.error and j.error.code == "PROVIDER_UNAVAILABLE" for j in done.provider_jobs)
    assert api.batches.refused - refused >= 3 * 8
    for run in runs:
        failed = client.get_run(run.id)
        assert failed.status is RunStatus.FAILED and failed.attempt == 3
        assert failed.error is not None and failed.error.code == "PROVIDER_UNAVAILABLE"
        assert "the fake Batch API is down (503)" in failed.error.message
        statuses = [e.status for e in events if e.run_id == run.id]
        assert statuses.count(RunStatus.RUNNING) == 3 and statuses[-1] is RunStatus.FAILED
    assert {p.job.id for p in seen if p.job.state == "abandoned"} == {
        j.id for j in done.provider_jobs
    }
