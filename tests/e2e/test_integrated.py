"""Integrated mode against a fake NEX at the wire: context refs checked, evidence
links delivered exactly once, NEX being down delays but never loses a link; and
standalone mode never calls NEX."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import Result

from nex.collector.client import (
    Client,
    DatasetStatus,
    EvidenceLink,
    EvidenceStatus,
    FailedPreconditionError,
    GenerationParams,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    connect,
    connect_async,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.nex_api import FakeNex
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.cli import invoke, no_traceback
from tests.support.collector import collector_settings
from tests.support.collector import integrated_collector as start_integrated


@pytest.fixture(scope="module")
def nex() -> Iterator[FakeNex]:
    fake = FakeNex().start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(scope="module")
def integrated_collector(
    backing: Backing,
    nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CollectorEnvironment]:
    """A collector in integrated mode, on its own database, talking to the fake NEX."""
    with start_integrated(
        backing, nex, tmp_path_factory.mktemp("integrated"), **teacher_settings(teacher_api)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def integrated(integrated_collector: CollectorEnvironment) -> Iterator[Client]:
    with connect(integrated_collector.address, token=integrated_collector.token) as client:
        yield client


@pytest.fixture(autouse=True)
def nex_up(nex: FakeNex) -> None:
    nex.down = False


def _wait_posted(client: Client, link_id: str, timeout: float = 30) -> EvidenceLink:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        link = client.get_evidence_link(link_id)
        if link.status == EvidenceStatus.POSTED:
            return link
        time.sleep(0.1)
    raise AssertionError(f"not posted: {client.get_evidence_link(link_id)}")


def test_context_refs_are_checked_against_nex(integrated: Client, nex: FakeNex) -> None:
    cid = unique("ctx")
    nex.contexts.add((cid, "3"))
    assert integrated.create_context_ref(cid, "3").nex_context_version == "3"
    with pytest.raises(FailedPreconditionError) as caught:
        integrated.create_context_ref(cid, "4")
    assert caught.value.reason == "NEX_CONTEXT_NOT_FOUND"
    nex.down = True
    with pytest.raises(UnavailableError):
        integrated.create_context_ref(cid, "5")
    assert [r.nex_context_version for r in integrated.list_context_refs(nex_context_id=cid)] == [
        "3"
    ]


def _dataset(client: Client, nex: FakeNex, *, link: bool = False) -> tuple[str, str]:
    cid = unique("ctx")
    nex.contexts.add((cid, "1"))
    ref = client.create_context_ref(cid, "1")
    template = client.create_template(
        unique("t"), user_template="Tell me about {{ x }}", variables=["x"]
    )
    batch = client.create_batch(
        unique("b"), template.id, "mock", "mock-1", params=GenerationParams(top_logprobs=2)
    )
    client.create_runs(batch.id, [{"x": str(i)} for i in range(3)])
    for _ in client.watch_batch(batch.id):
        pass
    ds = client.build_dataset(
        unique("ds"), "v1", [batch.id], context_ref_id=ref.id, link_evidence=link
    )
    assert client.wait_dataset(ds.id).status == DatasetStatus.READY
    return ref.id, ds.id


def test_evidence_is_delivered(integrated: Client, nex: FakeNex) -> None:
    ref_id, dataset_id = _dataset(integrated, nex)
    link = integrated.create_evidence_link(
        ref_id, dataset_id=dataset_id, kind="supports", note="distilled"
    )
    assert link.status == EvidenceStatus.PENDING
    posted = _wait_posted(integrated, link.id)
    assert posted.attempts == 1 and posted.post_time is not None
    body = nex.evidence[link.id]
    ref = integrated.get_context_ref(ref_id)
    assert (body["nex_context_id"], body["nex_context_version"]) == (ref.nex_context_id, "1")
    assert (
        body["dataset_id"] == dataset_id
        and body["kind"] == "supports"
        and body["uri"].startswith("file://")
    )
    assert [x.id for x in integrated.list_evidence_links(ref_id)] == [link.id]


def test_nex_down_delays_delivery_but_loses_nothing(integrated: Client, nex: FakeNex) -> None:
    ref_id, dataset_id = _dataset(integrated, nex)
    nex.down = True
    links = [
        integrated.create_evidence_link(ref_id, dataset_id=dataset_id, note=str(i))
        for i in range(5)
    ]
    deadline = time.monotonic() + 30
    while not all(integrated.get_evidence_link(x.id).attempts >= 1 for x in links):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    pending = [integrated.get_evidence_link(x.id) for x in links]
    assert all(x.status == EvidenceStatus.PENDING for x in pending)
    assert all(x.attempts >= 1 and "503" in (x.last_error or "") for x in pending)
    nex.down = False
    for x in links:
        _wait_posted(integrated, x.id)
    assert all(nex.posts[x.id] == 1 for x in links)  # exactly once, as NEX sees it


def test_a_dataset_can_link_itself_when_ready(integrated: Client, nex: FakeNex) -> None:
    ref_id, dataset_id = _dataset(integrated, nex, link=True)
    deadline = time.monotonic() + 30
    while not (links := list(integrated.list_evidence_links(ref_id))):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (link,) = links
    assert link.dataset_id == dataset_id and link.kind == "distillation_dataset"
    _wait_posted(integrated, link.id)


def test_bad_evidence_requests(integrated: Client, nex: FakeNex) -> None:
    with pytest.raises(NotFoundError):
        integrated.create_evidence_link("ctx_missing", run_id="run_missing")
    with pytest.raises(InvalidArgumentError):
        integrated.create_evidence_link("", dataset_id="ds_x")


def test_standalone_never_calls_nex(
    client: Client, collector: CollectorEnvironment, nex: FakeNex
) -> None:
    before = nex.requests
    ref = client.create_context_ref(unique("standalone"), "1")  # not checked: NEX may not know it
    with pytest.raises(FailedPreconditionError) as caught:
        client.create_evidence_link(ref.id, run_id="run_x")
    assert caught.value.reason == "INTEGRATION_DISABLED"
    with pytest.raises(FailedPreconditionError):
        list(client.list_evidence_links())
    template = client.create_template(unique("t"), user_template="{{ x }}", variables=["x"])
    batches = {b.id for b in client.list_batches()}
    with pytest.raises(FailedPreconditionError) as caught:  # not silently ignored
        client.create_batch(
            unique("b"), template.id, "mock", "mock-1", context_ref_id=ref.id, link_evidence=True
        )
    assert caught.value.reason == "INTEGRATION_DISABLED"
    assert {b.id for b in client.list_batches()} == batches  # nothing half-written
    batch = client.create_batch(unique("b"), template.id, "mock", "mock-1")
    with pytest.raises(FailedPreconditionError) as caught:
        client.build_dataset(
            unique("ds"), "v1", [batch.id], context_ref_id=ref.id, link_evidence=True
        )
    assert caught.value.reason == "INTEGRATION_DISABLED"
    assert nex.requests == before


# ------------------------------------------------------- from a terminal


def _id(prefix: str, result: Result) -> str:
    no_traceback(result)
    assert result.exit_code == 0, result.output
    match = re.search(rf"\b({prefix}_\w+)", result.output)
    assert match, result.output
    return match.group(1)


def test_the_acceptance_story_from_a_terminal(
    integrated_collector: CollectorEnvironment, integrated: Client, nex: FakeNex
) -> None:
    """Create a ContextRef in integrated mode, build a dataset from a batch, link
    it as evidence, see it POSTED: all with `nex-collector` commands."""
    cli = integrated_collector
    cid = unique("handbook")
    nex.contexts.add((cid, "7"))

    unknown = invoke(cli, "context", "create", cid, "8")
    no_traceback(unknown)
    assert unknown.exit_code == 1 and "NEX_CONTEXT_NOT_FOUND" in unknown.output
    ref_id = _id("ctx", invoke(cli, "context", "create", cid, "7", "--label", "team=search"))
    shown = invoke(cli, "context", "show", ref_id)
    assert shown.exit_code == 0 and cid in shown.output and "team=search" in shown.output
    assert ref_id in invoke(cli, "context", "list", "--nex-context-id", cid).output

    template = integrated.create_template(
        unique("t"), user_template="About {{ x }}", variables=["x"]
    )
    batch = integrated.create_batch(unique("b"), template.id, "mock", "mock-1")
    integrated.create_runs(batch.id, [{"x": str(i)} for i in range(3)])
    for _ in integrated.watch_batch(batch.id):
        pass
    built = invoke(
        cli, "dataset", "build", "--name", unique("ds"), "--version", "v1",
        "--batch", batch.id, "--context-ref", ref_id,
    )  # fmt: skip
    dataset_id = _id("ds", built)
    assert "context ref" in built.output and ref_id in built.output
    assert integrated.get_dataset(dataset_id).context_ref_id == ref_id

    linked = invoke(
        cli, "evidence", "link", "--context-ref", ref_id, "--dataset", dataset_id,
        "--kind", "supports", "--wait", "--timeout", "30",
    )  # fmt: skip
    link_id = _id("evl", linked)
    assert "posted" in linked.output
    assert integrated.get_evidence_link(link_id).status == EvidenceStatus.POSTED
    assert nex.posts[link_id] == 1 and nex.evidence[link_id]["dataset_id"] == dataset_id
    listed = invoke(cli, "evidence", "list", "--context-ref", ref_id)
    assert link_id in listed.output and "posted" in listed.output


def test_waiting_for_a_link_while_nex_is_down_gives_up_but_delivery_goes_on(
    integrated_collector: CollectorEnvironment, integrated: Client, nex: FakeNex
) -> None:
    ref_id, dataset_id = _dataset(integrated, nex)
    nex.down = True
    waited = invoke(
        integrated_collector, "evidence", "link", "--context-ref", ref_id,
        "--dataset", dataset_id, "--wait", "--timeout", "1.5",
    )  # fmt: skip
    no_traceback(waited)
    assert waited.exit_code == 1 and "not posted within 1.5 s" in waited.output
    link_id = _id("evl", invoke(integrated_collector, "evidence", "list", "--context-ref", ref_id))
    shown = invoke(integrated_collector, "evidence", "show", link_id)
    assert "pending" in shown.output and "503" in shown.output  # the last error, in words
    nex.down = False
    assert _wait_posted(integrated, link_id).attempts >= 2
    assert nex.posts[link_id] == 1


def test_evidence_link_needs_exactly_one_target(integrated_collector: CollectorEnvironment) -> None:
    both = invoke(
        integrated_collector, "evidence", "link", "--context-ref", "ctx_x",
        "--dataset", "ds_x", "--run", "run_x",
    )  # fmt: skip
    assert both.exit_code == 2 and "exactly one of --dataset and --run" in both.output
    missing = invoke(integrated_collector, "evidence", "link", "--context-ref", "ctx_missing",
                     "--run", "run_missing")  # fmt: skip
    no_traceback(missing)
    assert missing.exit_code == 1 and "error:" in missing.output


async def test_concurrent_creates_with_one_request_id_make_one_ref_and_one_link(
    integrated_collector: CollectorEnvironment, nex: FakeNex
) -> None:
    """Integrated mode asks NEX before storing a ref, which widens the race."""
    address, token = integrated_collector.address, integrated_collector.token
    async with connect_async(address, token=token) as c:
        cid, rid = unique("ctx"), unique("rid")
        nex.contexts.add((cid, "1"))
        refs = await asyncio.gather(
            *(c.create_context_ref(cid, "1", request_id=rid) for _ in range(20))
        )
        assert len({r.id for r in refs}) == 1
        template = await c.create_template(unique("t"), user_template="Hi {{ x }}", variables=["x"])
        batch = await c.create_batch(unique("b"), template.id, "mock", "mock-1")
        run = await c.create_run(batch.id, {"x": "1"})
        link_rid = unique("rid")
        links = await asyncio.gather(
            *(
                c.create_evidence_link(refs[0].id, run_id=run.id, request_id=link_rid)
                for _ in range(20)
            )
        )
        assert len({x.id for x in links}) == 1
        assert [x.id async for x in c.list_evidence_links(refs[0].id)] == [links[0].id]


def test_a_ref_made_in_standalone_mode_is_confirmed_before_integrated_use(
    backing: Backing,
    nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path: Path,
) -> None:
    cid = unique("was-standalone")
    with backing.isolated() as own:
        base = collector_settings(own, tmp_path / "data", **teacher_settings(teacher_api))
        with (
            CollectorEnvironment(base) as standalone,
            connect(standalone.address, token=standalone.token) as client,
        ):
            ref = client.create_context_ref(cid, "2")  # NEX is never asked
            template = client.create_template(unique("t"), user_template="{{ x }}", variables=["x"])
        integrated_settings = collector_settings(
            own,
            tmp_path / "data",
            MODE_INTEGRATION="integrated",
            NEX_BASE_URL=nex.base_url,
            NEX_API_TOKEN=nex.token,
            **teacher_settings(teacher_api),
        )
        with (
            CollectorEnvironment(integrated_settings, migrate=False) as later,
            connect(later.address, token=later.token) as client,
        ):
            with pytest.raises(FailedPreconditionError) as caught:
                client.create_batch(
                    unique("b"), template.id, "mock", "mock-1", context_ref_id=ref.id
                )
            assert caught.value.reason == "CONTEXT_REF_UNCONFIRMED"
            # Creating it again asks NEX, which does not know that version.
            with pytest.raises(FailedPreconditionError) as caught:
                client.create_context_ref(cid, "2")
            assert caught.value.reason == "NEX_CONTEXT_NOT_FOUND"
            nex.contexts.add((cid, "2"))
            asked = nex.requests
            assert client.create_context_ref(cid, "2").id == ref.id
            assert nex.requests == asked + 1
            client.create_batch(unique("b"), template.id, "mock", "mock-1", context_ref_id=ref.id)
            client.create_context_ref(cid, "2")  # confirmed once: NEX is not asked again
            assert nex.requests == asked + 1
