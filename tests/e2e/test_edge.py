"""Every string, number, list and map is checked at the edge, and an error never
echoes unbounded input: through the shipped client against the real server."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from nex.collector.client import (
    BooleanFilter,
    Client,
    CollectorError,
    EntropyFilter,
    GenerationParams,
    InvalidArgumentError,
    LengthFilter,
    RegexFilter,
    RunInput,
    ScoreFilter,
    TeacherBatch,
)
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import (
    context_ref_service_pb2,
    context_ref_service_pb2_grpc,
)
from tests.conftest import unique
from tests.fakes.teacher_api import FakeTeacherAPI, Scripted

MB = "x" * (1 << 20)


@dataclass(frozen=True)
class Seeds:
    template_id: str
    batch: TeacherBatch
    run_id: str


@pytest.fixture(scope="module")
def seeds(client: Client) -> Seeds:
    template = client.create_template(unique("edge"), user_template="{{ x }}", variables=["x"])
    batch = client.create_batch(unique("edge"), template.id, "mock", "mock-1")
    run = client.create_run(batch.id, {"x": "hello"})
    return Seeds(template.id, batch, run.id)


Call = Callable[[Client, Seeds, str], Any]


def _watch(client: Client, *, batch_id: str | None = None, run_id: str | None = None) -> None:
    next(iter(client.watch_runs(batch_id=batch_id, run_id=run_id)), None)


# (field path the violation names, a call that puts `value` into that field)
FIELDS: list[tuple[str, Call]] = [
    ("nex_context_id", lambda c, s, v: c.create_context_ref(v, "1")),
    ("nex_context_version", lambda c, s, v: c.create_context_ref("n", v)),
    ("labels['k']", lambda c, s, v: c.create_context_ref("n", "1", labels={"k": v})),
    ("request_id", lambda c, s, v: c.create_context_ref("n", "1", request_id=v)),
    ("id", lambda c, s, v: c.get_context_ref(v)),
    ("nex_context_id", lambda c, s, v: list(c.list_context_refs(nex_context_id=v))),
    ("name", lambda c, s, v: c.create_template(v, user_template="hi")),
    ("user_template", lambda c, s, v: c.create_template("t", user_template=v)),
    (
        "system_template",
        lambda c, s, v: c.create_template("t", user_template="a", system_template=v),
    ),
    ("variables[1]", lambda c, s, v: c.create_template("t", user_template="a", variables=["a", v])),
    ("context_ref_id", lambda c, s, v: c.create_template("t", user_template="a", context_ref_id=v)),
    ("id", lambda c, s, v: c.get_template(v)),
    ("name", lambda c, s, v: list(c.list_templates(v))),
    ("name", lambda c, s, v: c.create_batch(v, s.template_id, "mock", "m")),
    ("template_id", lambda c, s, v: c.create_batch("b", v, "mock", "m")),
    ("provider", lambda c, s, v: c.create_batch("b", s.template_id, v, "m")),
    ("model", lambda c, s, v: c.create_batch("b", s.template_id, "mock", v)),
    (
        "params.stop[0]",
        lambda c, s, v: c.create_batch(
            "b", s.template_id, "mock", "m", params=GenerationParams(stop=(v,))
        ),
    ),
    (
        "labels['k']",
        lambda c, s, v: c.create_batch("b", s.template_id, "mock", "m", labels={"k": v}),
    ),
    (
        "context_ref_id",
        lambda c, s, v: c.create_batch("b", s.template_id, "mock", "m", context_ref_id=v),
    ),
    ("request_id", lambda c, s, v: c.create_batch("b", s.template_id, "mock", "m", request_id=v)),
    ("id", lambda c, s, v: c.get_batch(v)),
    ("id", lambda c, s, v: c.cancel_batch(v)),
    ("batch_id", lambda c, s, v: c.create_run(v, {"x": "a"})),
    ("variables['x']", lambda c, s, v: c.create_run(s.batch.id, {"x": v})),
    ("request_id", lambda c, s, v: c.create_run(s.batch.id, {"x": "a"}, request_id=v)),
    ("runs[1].variables['x']", lambda c, s, v: c.create_runs(s.batch.id, [{"x": "a"}, {"x": v}])),
    (
        "runs[0].request_id",
        lambda c, s, v: c.create_runs(s.batch.id, [RunInput({"x": "a"}, request_id=v)]),
    ),
    ("id", lambda c, s, v: c.get_run(v)),
    ("batch_id", lambda c, s, v: list(c.list_runs(v))),
    ("run_id", lambda c, s, v: c.set_run_scores(v, {"judge": 1.0})),
    ("batch_id", lambda c, s, v: _watch(c, batch_id=v)),
    ("run_id", lambda c, s, v: _watch(c, run_id=v)),
    ("name", lambda c, s, v: c.build_dataset(v, "1", [s.batch.id])),
    ("version", lambda c, s, v: c.build_dataset("d", v, [s.batch.id])),
    ("batch_ids[0]", lambda c, s, v: c.build_dataset("d", "1", [v])),
    (
        "filters[0].regex.pattern",
        lambda c, s, v: c.build_dataset("d", "1", [s.batch.id], filters=[RegexFilter(v)]),
    ),
    (
        "filters[0].score.name",
        lambda c, s, v: c.build_dataset("d", "1", [s.batch.id], filters=[ScoreFilter(v, min=0)]),
    ),
    (
        "filters[0].boolean.name",
        lambda c, s, v: c.build_dataset("d", "1", [s.batch.id], filters=[BooleanFilter(v)]),
    ),
    ("context_ref_id", lambda c, s, v: c.build_dataset("d", "1", [s.batch.id], context_ref_id=v)),
    ("request_id", lambda c, s, v: c.build_dataset("d", "1", [s.batch.id], request_id=v)),
    ("id", lambda c, s, v: c.get_dataset(v)),
    ("name", lambda c, s, v: list(c.list_datasets(v))),
    ("context_ref_id", lambda c, s, v: c.create_evidence_link(v, run_id=s.run_id)),
    ("dataset_id", lambda c, s, v: c.create_evidence_link("ctx_a", dataset_id=v)),
    ("run_id", lambda c, s, v: c.create_evidence_link("ctx_a", run_id=v)),
    ("kind", lambda c, s, v: c.create_evidence_link("ctx_a", run_id=s.run_id, kind=v)),
    ("note", lambda c, s, v: c.create_evidence_link("ctx_a", run_id=s.run_id, note=v)),
    (
        "request_id",
        lambda c, s, v: c.create_evidence_link("ctx_a", run_id=s.run_id, request_id=v),
    ),
    ("id", lambda c, s, v: c.get_evidence_link(v)),
    ("context_ref_id", lambda c, s, v: list(c.list_evidence_links(v))),
]
IDS = [f"{i}-{field}" for i, (field, _) in enumerate(FIELDS)]


def _refused(client: Client, seeds: Seeds, call: Call, value: str) -> CollectorError:
    with pytest.raises(CollectorError) as caught:
        call(client, seeds, value)
    return caught.value


@pytest.mark.parametrize(("field", "call"), FIELDS, ids=IDS)
def test_nul_in_any_field_is_invalid_argument_naming_it(
    client: Client, seeds: Seeds, field: str, call: Call
) -> None:
    error = _refused(client, seeds, call, "a\x00b")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert field in [v.field for v in error.field_violations], error


@pytest.mark.parametrize(("field", "call"), FIELDS, ids=IDS)
def test_a_megabyte_value_gets_the_real_code_and_a_short_error(
    client: Client, seeds: Seeds, field: str, call: Call
) -> None:
    """Echoing it used to overflow gRPC's metadata limit: RESOURCE_EXHAUSTED."""
    error = _refused(client, seeds, call, MB)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert len(str(error)) < 4000
    assert all(len(v.field) <= 256 for v in error.field_violations)


@pytest.mark.parametrize("key", ["a\x00", "k" * (1 << 20)])
def test_map_keys_are_checked_and_quoted_short(client: Client, seeds: Seeds, key: str) -> None:
    for call in (
        lambda: client.create_context_ref("n", "1", labels={key: "v"}),
        lambda: client.create_run(seeds.batch.id, {key: "v"}),
        lambda: client.set_run_scores(seeds.run_id, {key: 1.0}),
    ):
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        fields = [v.field for v in caught.value.field_violations]
        assert len(fields) == 1 and len(fields[0]) < 120, fields
        assert "\x00" not in str(caught.value)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_numbers_are_invalid_argument(client: Client, seeds: Seeds, bad: float) -> None:
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("scores['judge']", lambda: client.set_run_scores(seeds.run_id, {"judge": bad})),
        (
            "params.temperature",
            lambda: client.create_batch(
                "b", seeds.template_id, "mock", "m", params=GenerationParams(temperature=bad)
            ),
        ),
        (
            "params.top_p",
            lambda: client.create_batch(
                "b", seeds.template_id, "mock", "m", params=GenerationParams(top_p=bad)
            ),
        ),
        (
            "filters[0].entropy.max",
            lambda: client.build_dataset(
                "d", "1", [seeds.batch.id], filters=[EntropyFilter(min=0, max=bad)]
            ),
        ),
        (
            "filters[0].score.min",
            lambda: client.build_dataset(
                "d", "1", [seeds.batch.id], filters=[ScoreFilter("judge", min=bad)]
            ),
        ),
    ]
    for field, call in calls:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert field in [v.field for v in caught.value.field_violations], caught.value


def test_every_list_and_map_has_a_cap(client: Client, seeds: Seeds) -> None:
    cases: list[tuple[str, Callable[[], Any]]] = [
        (
            "params.stop",
            lambda: client.create_batch(
                "b", seeds.template_id, "mock", "m", params=GenerationParams(stop=("a",) * 5)
            ),
        ),
        (
            "params.stop[0]",
            lambda: client.create_batch(
                "b", seeds.template_id, "mock", "m", params=GenerationParams(stop=("s" * 257,))
            ),
        ),
        ("scores", lambda: client.set_run_scores(seeds.run_id, {f"s{i}": 1.0 for i in range(65)})),
        (
            "labels",
            lambda: client.create_batch(
                "b", seeds.template_id, "mock", "m", labels={f"k{i}": "v" for i in range(65)}
            ),
        ),
        (
            "variables",
            lambda: client.create_run(seeds.batch.id, {f"v{i}": "a" for i in range(101)}),
        ),
        (
            "filters",
            lambda: client.build_dataset(
                "d", "1", [seeds.batch.id], filters=[LengthFilter(min_chars=1)] * 33
            ),
        ),
        ("batch_ids", lambda: client.build_dataset("d", "1", [f"bat_{i}" for i in range(101)])),
    ]
    for field, call in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert [v.field for v in caught.value.field_violations] == [field], caught.value


@pytest.mark.parametrize("name", ["a\n", "a\r\n", "..", "a/b", "../x", "a\u2028"])
def test_names_that_become_paths_are_matched_whole(client: Client, seeds: Seeds, name: str) -> None:
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("name", lambda: client.build_dataset(name, "1", [seeds.batch.id])),
        ("version", lambda: client.build_dataset(unique("d"), name, [seeds.batch.id])),
    ]
    for field, call in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert field in [v.field for v in caught.value.field_violations]


def test_label_keys_and_variable_names_are_matched_whole(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_context_ref("n", "1", labels={"env\n": "x"})
    assert [v.field for v in caught.value.field_violations] == ["labels['env\\n']"]
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_template(unique("t"), user_template="a", variables=["a\n"])
    assert [v.field for v in caught.value.field_violations] == ["variables[0]"]


@pytest.mark.parametrize("bad_id", ["ctx a", "ctx_\n", "../ctx", "ctx_é", "x" * 65])
def test_every_id_field_uses_one_check(client: Client, seeds: Seeds, bad_id: str) -> None:
    cases: list[tuple[str, Callable[[], Any]]] = [
        (
            "context_ref_id",
            lambda: client.create_template("t", user_template="a", context_ref_id=bad_id),
        ),
        (
            "context_ref_id",
            lambda: client.build_dataset("d", "1", [seeds.batch.id], context_ref_id=bad_id),
        ),
        ("batch_id", lambda: _watch(client, batch_id=bad_id)),
        ("run_id", lambda: _watch(client, run_id=bad_id)),
        ("id", lambda: client.get_run(bad_id)),
    ]
    for field, call in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert [v.field for v in caught.value.field_violations] == [field], caught.value
        assert caught.value.field_violations[0].description == "is not an id this service issued"


def test_refused_runs_leave_nothing_behind(client: Client, seeds: Seeds) -> None:
    before = len(list(client.list_runs(seeds.batch.id)))
    with pytest.raises(InvalidArgumentError):
        client.create_runs(seeds.batch.id, [{"x": "ok"}, {"x": "bad\x00"}])
    assert len(list(client.list_runs(seeds.batch.id))) == before


@pytest.fixture
def raw_refs(
    collector: CollectorEnvironment,
) -> Iterator[context_ref_service_pb2_grpc.ContextRefServiceStub]:
    with grpc.insecure_channel(collector.address) as channel:
        yield context_ref_service_pb2_grpc.ContextRefServiceStub(channel)


def _token(key: str, filter_key: str) -> str:
    import hashlib

    fingerprint = hashlib.sha256(filter_key.encode()).hexdigest()[:12]
    raw = json.dumps({"k": key, "f": fingerprint})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "a\x00b",
        "x" * (1 << 20),
        _token("ctx_\x00", "context_refs|"),
        _token("k" * 5000, "context_refs|"),
    ],
)
def test_page_tokens_are_checked_inside_too(
    collector: CollectorEnvironment,
    raw_refs: context_ref_service_pb2_grpc.ContextRefServiceStub,
    token: str,
) -> None:
    """A token is decoded into a key for PostgreSQL: a NUL in it was INTERNAL."""
    with pytest.raises(grpc.RpcError) as caught:
        raw_refs.ListContextRefs(
            context_ref_service_pb2.ListContextRefsRequest(page_token=token),
            metadata=(("authorization", f"Bearer {collector.token}"),),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_long_request_id_header_is_not_echoed_whole(
    collector: CollectorEnvironment,
    raw_refs: context_ref_service_pb2_grpc.ContextRefServiceStub,
) -> None:
    """x-request-id comes back in the trailers: it is clipped like any echo."""
    _reply, call = raw_refs.ListContextRefs.with_call(
        context_ref_service_pb2.ListContextRefsRequest(page_size=1),
        metadata=(("authorization", f"Bearer {collector.token}"), ("x-request-id", "r" * 7000)),
    )
    echoed = dict(call.trailing_metadata() or ())["x-request-id"]
    assert echoed == "r" * 128


@pytest.mark.parametrize(("nex_id", "version"), [("..", "1"), ("ctx", "."), ("ctx", " .. ")])
def test_nex_context_ids_cannot_be_dot_segments(client: Client, nex_id: str, version: str) -> None:
    """They become path segments of a NEX URL, where ".." would climb a level."""
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_context_ref(nex_id, version)
    assert len(caught.value.field_violations) == 1


def test_a_teacher_output_with_nul_is_stored(
    client: Client, seeds: Seeds, fresh_teacher_api: FakeTeacherAPI
) -> None:
    """A teacher's text reaches PostgreSQL too: a NUL in it left the run RUNNING,
    its result refused by the database at every attempt."""
    logprobs = {"content": [{"token": "a\x00", "logprob": -0.1, "top_logprobs": []}]}
    answer = {
        "choices": [
            {"message": {"content": "a\x00b"}, "finish_reason": "stop", "logprobs": logprobs}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    fresh_teacher_api.script(Scripted(200, body=answer))
    batch = client.create_batch(unique("nul"), seeds.template_id, "openai", "gpt-4o-mini")
    run = client.create_run(batch.id, {"x": "a"})
    deadline = time.monotonic() + 30
    while (done := client.get_run(run.id)).status.name in ("QUEUED", "RUNNING"):
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.1)
    assert done.status.name == "COMPLETED", done.error
    assert done.output_text == "a\ufffdb"
