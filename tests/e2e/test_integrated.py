"""Integrated mode against a fake NEX at the wire: context refs checked, evidence
links delivered exactly once, NEX being down delays but never loses a link; and
standalone mode never calls NEX."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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
)
from tests.conftest import teacher_settings, unique
from tests.fakes.nex_api import FakeNex
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import RunningCollector, collector_settings, running_collector


@pytest.fixture(scope="module")
def nex() -> Iterator[FakeNex]:
    fake = FakeNex().start_in_thread()
    try:
        yield fake
    finally:
        fake.stop_thread()


@pytest.fixture(scope="module")
def integrated(
    backing: Backing,
    nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Client]:
    with (
        backing.isolated() as own,
        _integrated_collector(own, nex, teacher_api, tmp_path_factory) as client,
    ):
        yield client


@contextmanager
def _integrated_collector(
    backing: Backing,
    nex: FakeNex,
    teacher_api: FakeTeacherAPI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Client]:
    settings = collector_settings(
        backing,
        Path(tmp_path_factory.mktemp("integrated")),
        MODE_INTEGRATION="integrated",
        NEX_BASE_URL=nex.base_url,
        NEX_API_TOKEN=nex.token,
        NEX_TIMEOUT_S=1.0,
        **teacher_settings(teacher_api),
    )
    with (
        running_collector(settings) as running,
        connect(running.address, token=running.token) as client,
    ):
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
    time.sleep(2.5)
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
    client: Client, collector: RunningCollector, nex: FakeNex
) -> None:
    before = nex.requests
    ref = client.create_context_ref(unique("standalone"), "1")  # not checked: NEX may not know it
    with pytest.raises(FailedPreconditionError) as caught:
        client.create_evidence_link(ref.id, run_id="run_x")
    assert caught.value.reason == "INTEGRATION_DISABLED"
    with pytest.raises(FailedPreconditionError):
        list(client.list_evidence_links())
    assert nex.requests == before
