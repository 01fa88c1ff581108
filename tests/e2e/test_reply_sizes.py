"""A reply that cannot be sent never follows a commit: what one call may create
is capped before anything is written, BatchCreateRuns answers each run in a
minimal view, and list pages are cut by bytes, so every stored run can be read.

The issue's repro (5,000 runs of 12 KB variables, ListRuns failing forever) is
scaled down here with a template that repeats its variable: the rendered prompt
is eight times the variable."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from nex.collector.client import (
    Client,
    GenerationParams,
    InvalidArgumentError,
    RunStatus,
    RunView,
)
from nex.collector.server.domain.limits import MAX_VARIABLE_VALUE
from nex.collector.server.domain.sizes import MAX_CALL_INPUT_BYTES, MAX_RUN_INPUT_BYTES, PAGE_BYTES
from nex.collector.server.domain.templates import MAX_RENDERED_CHARS
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import teacher_pb2, teacher_service_pb2, teacher_service_pb2_grpc
from tests.conftest import unique

REPEATS = 8
KB = 1024


@pytest.fixture(scope="module")
def amplifying_template(client: Client) -> str:
    body = "".join("{{ v }}" for _ in range(REPEATS))
    return client.create_template(unique("big"), user_template=body, variables=["v"]).id


# A variable value holds at most MAX_VARIABLE_VALUE characters (edge check) and a
# rendered message at most MAX_RENDERED_CHARS (sandbox): reaching the per-run cap
# takes several variables, each rendered twice into both messages.
WIDE_VARS = ["a", "b", "c", "d", "e"]
WIDE_REPEATS = 2  # per message
WIDE_FACTOR = len(WIDE_VARS) * (1 + 2 * WIDE_REPEATS)  # stored chars per char of a value


@pytest.fixture(scope="module")
def wide_template(client: Client) -> str:
    body = "".join("{{ " + v + " }}" for v in WIDE_VARS) * WIDE_REPEATS
    return client.create_template(
        unique("wide"), system_template=body, user_template=body, variables=WIDE_VARS
    ).id


def _wide(char: str, length: int) -> dict[str, str]:
    return {v: char * length for v in WIDE_VARS}


def _batch(client: Client, template_id: str) -> str:
    return client.create_batch(unique("big"), template_id, "mock", "mock-1").id


@pytest.fixture
def stub(collector: CollectorEnvironment) -> Iterator[teacher_service_pb2_grpc.TeacherServiceStub]:
    with grpc.insecure_channel(
        collector.address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    ) as channel:
        yield teacher_service_pb2_grpc.TeacherServiceStub(channel)


def test_a_run_too_big_to_return_is_refused_and_nothing_is_created(
    client: Client, wide_template: str
) -> None:
    batch_id = _batch(client, wide_template)
    fine = _wide("x", 1)
    too_big = _wide("y", MAX_RUN_INPUT_BYTES // WIDE_FACTOR + 2000)
    assert len(too_big["a"]) <= MAX_VARIABLE_VALUE
    assert len(WIDE_VARS) * WIDE_REPEATS * len(too_big["a"]) <= MAX_RENDERED_CHARS
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_runs(batch_id, [fine, too_big, fine])
    assert [v.field for v in caught.value.field_violations] == ["runs[1].variables"]
    assert "a run holds at most 2.0 MiB" in caught.value.field_violations[0].description
    with pytest.raises(InvalidArgumentError) as single:
        client.create_run(batch_id, too_big)
    assert [v.field for v in single.value.field_violations] == ["variables"]
    assert client.get_batch(batch_id).counts.total == 0

    largest = _wide("z", (MAX_RUN_INPUT_BYTES - KB) // WIDE_FACTOR)
    run = client.get_run(client.create_run(batch_id, largest).id, view=RunView.FULL)
    per_message = len(WIDE_VARS) * WIDE_REPEATS * len(largest["a"])
    assert [len(m.content) for m in run.messages] == [per_message, per_message]
    assert run.variables == largest


def test_a_call_too_big_in_total_is_refused_and_nothing_is_created(
    client: Client, amplifying_template: str
) -> None:
    batch_id = _batch(client, amplifying_template)
    per_run = 64 * KB * (REPEATS + 1)
    n = MAX_CALL_INPUT_BYTES // per_run + 1
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_runs(batch_id, [{"v": f"{i:04d}" + "z" * (64 * KB)} for i in range(n)])
    assert [v.field for v in caught.value.field_violations] == ["runs"]
    assert "split the list" in caught.value.field_violations[0].description
    assert client.get_batch(batch_id).counts.total == 0


def test_big_runs_get_a_small_reply_and_list_at_every_page_size(
    client: Client,
    amplifying_template: str,
    stub: teacher_service_pb2_grpc.TeacherServiceStub,
    collector: CollectorEnvironment,
) -> None:
    batch_id = _batch(client, amplifying_template)
    n = 20  # 20 x 64 KiB sent, 20 x 576 KiB stored: 11 MiB, three pages' worth
    created = client.create_runs(batch_id, [{"v": f"{i:04d}" + "w" * (64 * KB)} for i in range(n)])
    assert all(r.id and r.status == RunStatus.QUEUED for r in created)
    assert all(not r.variables and not r.messages for r in created)
    for _ in client.watch_batch(batch_id):
        pass

    auth = (("authorization", f"Bearer {collector.token}"),)
    for view in (teacher_pb2.RUN_VIEW_BASIC, teacher_pb2.RUN_VIEW_FULL):
        for page_size in (1, 7, 0, 1000):
            seen: list[str] = []
            token = ""
            while True:
                page = stub.ListRuns(
                    teacher_service_pb2.ListRunsRequest(
                        batch_id=batch_id, view=view, page_size=page_size, page_token=token
                    ),
                    metadata=auth,
                )
                assert page.runs
                assert len(page.runs) == 1 or page.ByteSize() <= PAGE_BYTES
                seen += [r.id for r in page.runs]
                if not (token := page.next_page_token):
                    break
            assert seen == sorted(r.id for r in created), (view, page_size)
    largest = client.get_run(created[-1].id, view=RunView.FULL)
    assert largest.status == RunStatus.COMPLETED and len(largest.messages[0].content) > 64 * KB


def test_a_batch_whose_runs_could_not_be_returned_is_refused(
    client: Client, amplifying_template: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_batch(
            unique("huge"),
            amplifying_template,
            "mock",
            "mock-1",
            params=GenerationParams(max_tokens=1_000_000, top_logprobs=20),
        )
    assert [v.field for v in caught.value.field_violations] == ["params.max_tokens"]
