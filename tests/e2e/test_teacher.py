"""TeacherService end to end: shipped client -> real server -> real arq worker ->
teacher SDKs -> a fake teacher at the wire."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

import pytest

from nex.collector.client import (
    BatchStatus,
    Client,
    FailedPreconditionError,
    GenerationParams,
    InvalidArgumentError,
    NotFoundError,
    PromptTemplate,
    RunInput,
    RunStatus,
    RunView,
    TeacherBatch,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import TEACHER_KEY, unique
from tests.fakes.teacher_api import FakeTeacherAPI, Scripted
from tests.support.db import fetch_all
from tests.support.waiting import until


@pytest.fixture
def template(client: Client) -> PromptTemplate:
    return client.create_template(
        unique("explain"),
        system_template="You are a {{ style }} teacher.",
        user_template="Explain {{ topic }} in one paragraph.",
        variables=["style", "topic"],
    )


def _batch(
    client: Client, template: PromptTemplate, provider: str = "mock", top_logprobs: int = 3
) -> TeacherBatch:
    model = {"mock": "mock-1", "openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}[
        provider
    ]
    return client.create_batch(
        unique("batch"),
        template.id,
        provider,
        model,
        params=GenerationParams(top_logprobs=top_logprobs, max_tokens=24),
    )


def _vars(i: int) -> dict[str, str]:
    return {"style": "patient", "topic": f"topic {i}"}


def _wait(client: Client, batch_id: str) -> TeacherBatch:
    for _ in client.watch_batch(batch_id):
        pass
    return client.get_batch(batch_id)


def test_lifecycle_on_the_mock_teacher(client: Client, template: PromptTemplate) -> None:
    batch = _batch(client, template)
    assert batch.status == BatchStatus.OPEN
    runs = client.create_runs(batch.id, [_vars(i) for i in range(12)])
    assert [r.status for r in runs] == [RunStatus.QUEUED] * 12
    assert not runs[0].messages and not runs[0].variables  # the reply is minimal
    rendered = client.get_run(runs[0].id).messages
    assert rendered[0].content == "You are a patient teacher."
    assert rendered[1].content == "Explain topic 0 in one paragraph."

    events = list(client.watch_batch(batch.id))
    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions))
    for run in runs:
        statuses = [e.status for e in events if e.run_id == run.id]
        assert statuses == [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED]

    done = client.get_batch(batch.id)
    assert done.status == BatchStatus.COMPLETED
    assert (done.counts.completed, done.counts.total) == (12, 12)
    assert done.usage.output_tokens > 0 and done.usage.input_tokens > 0

    full = client.get_run(runs[0].id)
    assert full.output_text and full.has_logprobs and full.attempt == 1
    assert len(full.tokens) == full.usage.output_tokens
    assert all(len(t.top_logprobs) == 3 for t in full.tokens)
    assert full.start_time and full.end_time and full.end_time >= full.start_time
    basic = client.get_run(runs[0].id, view=RunView.BASIC)
    assert basic.tokens == () and basic.output_text == full.output_text

    listed = list(client.list_runs(batch.id, status=RunStatus.COMPLETED, page_size=5))
    assert [r.id for r in listed] == [r.id for r in runs]
    assert list(client.list_runs(batch.id, status=RunStatus.FAILED)) == []


def test_openai_logprobs_are_stored_exactly_as_sent(
    client: Client, template: PromptTemplate, fresh_teacher_api: FakeTeacherAPI
) -> None:
    batch = _batch(client, template, "openai", top_logprobs=5)
    run = client.create_run(batch.id, _vars(1))
    _wait(client, batch.id)
    stored = client.get_run(run.id)
    assert stored.status == RunStatus.COMPLETED
    (exchange,) = [x for x in fresh_teacher_api.exchanges if x.status == 200]
    sent = exchange.response["choices"][0]
    assert stored.output_text == sent["message"]["content"]
    assert stored.finish_reason == sent["finish_reason"]
    assert [(t.token, t.logprob) for t in stored.tokens] == [
        (c["token"], c["logprob"]) for c in sent["logprobs"]["content"]
    ]
    assert [[(a.token, a.logprob) for a in t.top_logprobs] for t in stored.tokens] == [
        [(a["token"], a["logprob"]) for a in c["top_logprobs"]] for c in sent["logprobs"]["content"]
    ]
    assert stored.usage.input_tokens == exchange.response["usage"]["prompt_tokens"]
    assert exchange.request["top_logprobs"] == 5 and exchange.request["logprobs"] is True
    assert exchange.request["messages"][1]["content"] == "Explain topic 1 in one paragraph."


# Token texts go to PostgreSQL joined by U+001F and split there (db/answers.py);
# texts that would not split back exactly take the array path.
@pytest.mark.parametrize(
    ("tokens", "alternatives"),
    [
        (["Hel", "lo", " wörld", "😀"], [["Hel", "He"], ["lo"], [" wörld", " w"], ["😀", ""]]),
        (["a\x1fb", "\x1f"], [["\x1f", "x"], ["\x1f\x1f"]]),  # the separator itself
        ([""], [[""]]),  # one empty text: "" splits into no element at all
        (["", ""], [["", ""], []]),
        (["a\x00"], [["\x00"]]),  # NUL is stored as U+FFFD, on both paths
        ([], []),
    ],
    ids=["plain", "separator", "one-empty", "empties", "nul", "none"],
)
def test_token_texts_are_stored_exactly_whatever_they_hold(
    client: Client,
    template: PromptTemplate,
    fresh_teacher_api: FakeTeacherAPI,
    tokens: list[str],
    alternatives: list[list[str]],
) -> None:
    content = [
        {
            "token": token,
            "logprob": -0.5 * i,
            "top_logprobs": [{"token": a, "logprob": -1.0 - j} for j, a in enumerate(alts)],
        }
        for i, (token, alts) in enumerate(zip(tokens, alternatives, strict=True))
    ]
    answer = {
        "choices": [
            {
                "message": {"content": "".join(tokens)},
                "finish_reason": "stop",
                "logprobs": {"content": content},
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(tokens)},
    }
    fresh_teacher_api.script(Scripted(200, body=answer))
    batch = _batch(client, template, "openai", top_logprobs=2)
    run = client.create_run(batch.id, _vars(1))
    _wait(client, batch.id)
    stored = client.get_run(run.id)
    assert stored.status == RunStatus.COMPLETED, stored.error

    def kept(text: str) -> str:
        return text.replace("\x00", "\ufffd")

    assert [t.token for t in stored.tokens] == [kept(t) for t in tokens]
    assert [[a.token for a in t.top_logprobs] for t in stored.tokens] == [
        [kept(a) for a in alts] for alts in alternatives
    ]
    assert [t.logprob for t in stored.tokens] == [-0.5 * i for i in range(len(tokens))]


def test_anthropic_runs_have_no_logprobs(
    client: Client, template: PromptTemplate, fresh_teacher_api: FakeTeacherAPI
) -> None:
    batch = _batch(client, template, "anthropic")
    run = client.create_run(batch.id, _vars(2))
    _wait(client, batch.id)
    stored = client.get_run(run.id)
    assert stored.status == RunStatus.COMPLETED
    assert stored.output_text and not stored.has_logprobs and stored.tokens == ()
    (exchange,) = fresh_teacher_api.exchanges
    assert exchange.request["system"] == "You are a patient teacher."


def test_429s_honour_retry_after_without_using_attempts(
    client: Client, template: PromptTemplate, fresh_teacher_api: FakeTeacherAPI
) -> None:
    fresh_teacher_api.fail_next(429, times=2, retry_after="1")
    batch = _batch(client, template, "openai")
    run = client.create_run(batch.id, _vars(3))
    started = time.monotonic()
    events = list(client.watch_run(run.id))
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1 waits
    # Attempts are for real failures: a 429 is a wait, not an attempt.
    assert [(e.status, e.attempt) for e in events] == [
        (RunStatus.QUEUED, 0),
        (RunStatus.RUNNING, 1),
        (RunStatus.COMPLETED, 1),
    ]
    assert client.get_run(run.id).attempt == 1
    assert fresh_teacher_api.total_requests == 3


def test_server_errors_still_use_attempts(
    client: Client, template: PromptTemplate, fresh_teacher_api: FakeTeacherAPI
) -> None:
    fresh_teacher_api.fail_next(500, times=2)
    batch = _batch(client, template, "openai")
    run = client.create_run(batch.id, _vars(5))
    list(client.watch_run(run.id))
    done = client.get_run(run.id)
    assert (done.status, done.attempt) == (RunStatus.COMPLETED, 3)


@pytest.mark.parametrize(
    ("status", "code"), [(400, "PROVIDER_BAD_REQUEST"), (401, "PROVIDER_AUTH")]
)
def test_non_retryable_errors_fail_at_once_without_leaking_the_key(
    client: Client,
    template: PromptTemplate,
    fresh_teacher_api: FakeTeacherAPI,
    collector: CollectorEnvironment,
    status: int,
    code: str,
) -> None:
    fresh_teacher_api.fail_next(status)
    batch = _batch(client, template, "openai")
    run = client.create_run(batch.id, _vars(4))
    events = list(client.watch_run(run.id))
    assert events[-1].status == RunStatus.FAILED and events[-1].error is not None
    assert events[-1].error.code == code
    failed = client.get_run(run.id)
    assert failed.attempt == 1 and failed.error is not None and failed.error.code == code
    assert fresh_teacher_api.total_requests == 1
    rows = fetch_all(
        collector, "SELECT row_to_json(r)::text AS j FROM runs r WHERE batch_id = $1", batch.id
    )
    assert rows and all(TEACHER_KEY not in row["j"] for row in rows)
    assert TEACHER_KEY not in failed.error.message


def test_batch_create_runs_is_atomic(client: Client, template: PromptTemplate) -> None:
    batch = _batch(client, template)
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_runs(batch.id, [_vars(0), {"topic": "no style"}, _vars(2)])
    assert [v.field for v in caught.value.field_violations] == ["runs[1].variables"]
    assert client.get_batch(batch.id).counts.total == 0


def test_request_ids_make_run_creation_idempotent(client: Client, template: PromptTemplate) -> None:
    batch = _batch(client, template)
    first = client.create_run(batch.id, _vars(0), request_id=unique("r"))
    assert client.create_run(batch.id, _vars(0), request_id=first.request_id or "").id == first.id
    again = client.create_runs(
        batch.id, [RunInput(_vars(0), first.request_id), RunInput(_vars(1), unique("r"))]
    )
    assert again[0].id == first.id and again[1].id != first.id
    assert client.get_batch(batch.id).counts.total == 2
    request_id = unique("b")
    b1 = client.create_batch(unique("n"), template.id, "mock", "mock-1", request_id=request_id)
    assert (
        client.create_batch(unique("n"), template.id, "mock", "mock-1", request_id=request_id).id
        == b1.id
    )


def test_bad_batch_requests(client: Client, template: PromptTemplate) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_batch(
            "", template.id, "gemini", "", params=GenerationParams(temperature=5, top_logprobs=50)
        )
    fields = {v.field for v in caught.value.field_violations}
    assert {"name", "provider", "model", "params.temperature", "params.top_logprobs"} <= fields
    with pytest.raises(NotFoundError):
        client.create_batch(unique("n"), "tpl_missing", "mock", "mock-1")
    with pytest.raises(NotFoundError):
        client.create_run("bat_missing", _vars(0))
    with pytest.raises(InvalidArgumentError):
        list(client.watch_runs())


def test_cancel_stops_further_teacher_calls(
    client: Client, template: PromptTemplate, fresh_teacher_api: FakeTeacherAPI
) -> None:
    fresh_teacher_api.hold_answers()  # the test says when answers come
    batch = _batch(client, template, "openai")
    client.create_runs(batch.id, [_vars(i) for i in range(400)])
    until("calls waiting at the teacher", lambda: fresh_teacher_api.held_answers > 0)
    fresh_teacher_api.release_answers(5)
    until("five answers stored", lambda: client.get_batch(batch.id).counts.completed >= 5)
    cancelled = client.cancel_batch(batch.id)
    assert cancelled.status == BatchStatus.CANCELLED
    fresh_teacher_api.release_answers()  # the calls in flight at the cancel end
    final = _wait(client, batch.id)
    assert final.counts.active == 0 and final.counts.cancelled > 0
    calls = fresh_teacher_api.total_requests
    assert calls == final.counts.completed < 400
    # Runs queued after the cancelled ones complete: the worker has taken every
    # job before them, and none of the cancelled runs called the teacher.
    later = _batch(client, template, "openai")
    client.create_runs(later.id, [_vars(i) for i in range(3)])
    assert _wait(client, later.id).counts.completed == 3
    assert fresh_teacher_api.total_requests == calls + 3
    with pytest.raises(FailedPreconditionError):
        client.create_run(batch.id, _vars(0))


def test_watch_resumes_from_any_revision(client: Client, template: PromptTemplate) -> None:
    batch = _batch(client, template)
    client.create_runs(batch.id, [_vars(i) for i in range(5)])
    everything = list(client.watch_batch(batch.id))
    assert len(everything) == 15
    for cut in (0, 1, 7, 14):
        rest = list(client.watch_batch(batch.id, after_revision=everything[cut].revision))
        assert rest == everything[cut + 1 :]
    run_id = everything[0].run_id
    assert [e.status for e in client.watch_run(run_id)] == [
        RunStatus.QUEUED,
        RunStatus.RUNNING,
        RunStatus.COMPLETED,
    ]


def test_follow_keeps_a_batch_watch_open_for_new_runs(
    client: Client, template: PromptTemplate
) -> None:
    batch = _batch(client, template)
    seen = []
    stream = client.watch_batch(batch.id, follow=True)
    client.create_run(batch.id, _vars(0))
    for event in stream:
        seen.append(event.status)
        if event.status == RunStatus.COMPLETED:
            break
    assert seen == [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED]


def test_scores_attach_to_completed_runs(client: Client, template: PromptTemplate) -> None:
    batch = _batch(client, template)
    run = client.create_run(batch.id, _vars(0))
    _wait(client, batch.id)
    scored = client.set_run_scores(run.id, {"judge": 0.75})
    assert scored.scores == {"judge": 0.75}
    assert client.set_run_scores(run.id, {"judge": 0.5, "style": 1.0}).scores == {
        "judge": 0.5,
        "style": 1.0,
    }
    for bad in ({"judge": float("nan")}, {"perplexity": 3.0}):
        with pytest.raises(InvalidArgumentError):
            client.set_run_scores(run.id, bad)


def test_a_watch_closed_mid_wait_leaves_no_pending_task(
    client: Client,
    template: PromptTemplate,
    collector: CollectorEnvironment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = _batch(client, template)
    with caplog.at_level("ERROR", logger="asyncio"):
        collector.call(_cancel_a_watch_mid_wait(collector.container.watcher, batch.id))
    assert "Task was destroyed but it is pending" not in caplog.text


async def _cancel_a_watch_mid_wait(watcher: Any, batch_id: str) -> None:
    """What the server does when a client goes away while its watch waits."""

    async def consume() -> None:
        async for _ in watcher.watch(batch_id=batch_id, run_id="", after_revision=0, follow=True):
            pass

    for _ in range(3):
        task = asyncio.create_task(consume())
        await _parked(watcher, batch_id)  # replayed nothing; now waiting for events
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    gc.collect()
    await asyncio.sleep(0)


async def _parked(watcher: Any, batch_id: str, timeout_s: float = 10.0) -> None:
    """Until a watch of the batch waits for its feed's next change."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not ((feed := watcher._feeds.get(batch_id)) and feed.changed._waiters):
        assert loop.time() < deadline, "the watch never waited for events"
        await asyncio.sleep(0.005)
