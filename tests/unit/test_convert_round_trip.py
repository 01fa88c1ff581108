"""The client's and the server's conversions agree on every field of every
message both convert (each side keeps its own: the client never imports the
server; this test imports both).

- Requests (generation params, dataset filters): client value -> proto (client)
  -> server domain -> proto (server) -> client value, equal to the start.
- Responses (every resource the server returns): server domain -> proto
  (server) -> client value -> proto again, equal to the server's proto. The
  client has no conversion back to proto for these, so the test writes one
  that goes by the proto's field names: a proto field the client value lacks,
  or holds under another name, fails.

For each message, every field of it (and of the messages inside it) must be set
to something other than its default in at least one example: a field the server
stops writing fails that check, as a field the client stops reading fails the
round trip. ``filled`` makes examples that set every field; Hypothesis adds
others (unset optionals, empty lists, other values).

Not here, as the server converts them outside ``api/convert.py``: ``RunInput``
(read inline by the teacher servicer) and ``ProviderJobProgress`` (the servicer
wraps ``convert.provider_job``, which is here).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from nex.collector.client import _convert as client
from nex.collector.client import _types as client_types
from nex.collector.server.api import convert as server
from nex.collector.server.domain.batches import BatchView, ProviderJobView
from nex.collector.server.domain.budgets import CostEstimate
from nex.collector.server.domain.context_refs import ContextRef
from nex.collector.server.domain.datasets import Dataset
from nex.collector.server.domain.evidence import EvidenceLink
from nex.collector.server.domain.runs import Run, RunError, RunEvent
from nex.collector.server.domain.teacher import TokenLogprobs
from nex.collector.server.domain.templates import PromptTemplate
from nex.collector.server.services.teachers import TeacherView
from nex.collector.v1 import (
    context_ref_pb2,
    dataset_pb2,
    evidence_pb2,
    teacher_endpoint_pb2,
    teacher_pb2,
    teacher_service_pb2,
    template_pb2,
)

EXAMPLES = max(50, settings().max_examples)

# ------------------------------------------------------------- strategies

_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_TEXT = st.text(max_size=6)


def _tokens() -> st.SearchStrategy[TokenLogprobs]:
    """Columns that line up, as the server stores them."""
    position = st.tuples(_TEXT, st.floats(-100, 0), st.lists(st.tuples(_TEXT, st.floats(-100, 0))))
    return st.lists(position, max_size=3).map(TokenLogprobs.from_positions)


# Values the type alone does not constrain enough: an error always has a code
# (the client reads an error without one as none), a dataset has one part or more.
_BY_TYPE: dict[Any, st.SearchStrategy[Any]] = {
    RunError: st.builds(RunError, code=st.text(min_size=1, max_size=6), message=_TEXT),
    TokenLogprobs: _tokens(),
}
_BY_FIELD: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (Dataset, "parts"): st.integers(1, 64),
}


def values(tp: Any) -> st.SearchStrategy[Any]:
    """Any value of type ``tp`` (a dataclass gets every field, defaulted ones too)."""
    if tp in _BY_TYPE:
        return _BY_TYPE[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(values(a) for a in args))
    if origin in (dict, Mapping):
        return st.dictionaries(values(args[0]), values(args[1]), max_size=3)
    if origin is tuple:
        return st.lists(values(args[0]), max_size=3).map(tuple)
    if origin in (list, Sequence):
        return st.lists(values(args[0]), max_size=3)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        str: _TEXT,
        bool: st.booleans(),
        int: st.integers(0, 2**31 - 1),
        float: st.floats(-1e9, 1e9),
        datetime: _TIMES,
    }
    if tp in simple:
        return simple[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        by_field = {f.name: values(hints[f.name]) for f in dataclasses.fields(tp) if f.init}
        by_field.update({name: s for (cls, name), s in _BY_FIELD.items() if cls is tp})
        return st.builds(tp, **by_field)
    raise TypeError(f"no strategy for {tp!r}")


_FILLED: dict[Any, Any] = {
    TokenLogprobs: TokenLogprobs.from_positions([("t", -0.5, [("u", -1.5), ("v", -2.5)])]),
}


def filled(tp: Any, counter: Iterator[int] | None = None) -> list[Any]:
    """Values of type ``tp`` with every field set to something other than its
    default (never None, empty, zero or False), one for each member of a union
    (a tuple of a union holds one of each); numbers count up, so no two are alike.
    These examples set every proto field the conversions know of."""
    n = itertools.count(1) if counter is None else counter
    if tp in _FILLED:
        return [_FILLED[tp]]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return [v for a in args if a is not type(None) for v in filled(a, n)]
    if origin in (dict, Mapping):
        return [dict(zip(filled(args[0], n), filled(args[1], n), strict=True))]
    if origin is tuple:
        return [tuple(filled(args[0], n))]
    if origin in (list, Sequence):
        return [filled(args[0], n)]
    simple: dict[Any, Callable[[], Any]] = {
        str: lambda: f"s{next(n)}",
        bool: lambda: True,
        int: lambda: next(n),
        float: lambda: next(n) + 0.5,
        datetime: lambda: datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=next(n)),
    }
    if tp in simple:
        return [simple[tp]()]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [list(tp)[-1]]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = [f.name for f in dataclasses.fields(tp) if f.init]
        return [tp(**{name: filled(hints[name], n)[0] for name in fields})]
    raise TypeError(f"no filled value for {tp!r}")


# ------------------------------------------------------ protos, generically

_LEAVES = {"google.protobuf.Timestamp"}

# protobuf's stubs give descriptors two types (pure Python and upb): Any here.
Descriptor = Any
FieldDescriptor = Any

# The client's own conversions to proto, where it has one.
_CLIENT_TO_PROTO: dict[str, Callable[[Any], Message]] = {
    "nex.collector.v1.GenerationParams": client.params_to_proto,
    "nex.collector.v1.Filter": client.filter_to_proto,
}


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def encode(value: Any, msg: Message) -> None:
    """Fills ``msg`` from a client value, reading each proto field from the
    attribute of the same name (AttributeError: the client lacks the field)."""
    name = msg.DESCRIPTOR.full_name
    if isinstance(msg, timestamp_pb2.Timestamp):
        msg.FromDatetime(value)
        return
    if name in _CLIENT_TO_PROTO:
        msg.CopyFrom(_CLIENT_TO_PROTO[name](value))
        return
    msg.SetInParent()
    for fd in msg.DESCRIPTOR.fields:
        item = getattr(value, fd.name)
        if item is None:
            continue  # None is the unset field
        target = getattr(msg, fd.name)
        if _is_map(fd):
            target.update(item)
        elif fd.is_repeated:
            for element in item:
                if fd.message_type is not None:
                    encode(element, target.add())
                else:
                    target.append(element)
        elif fd.message_type is not None:
            encode(item, target)
        else:
            setattr(msg, fd.name, int(item) if fd.enum_type is not None else item)


def _nested(fd: FieldDescriptor) -> Descriptor | None:
    """The message inside a field that the coverage walks into."""
    if fd.message_type is None or _is_map(fd) or fd.message_type.full_name in _LEAVES:
        return None
    return fd.message_type


def every_field(descriptor: Descriptor, out: set[str] | None = None) -> set[str]:
    """The full names of the fields of a message and of the messages in it."""
    out = set() if out is None else out
    for fd in descriptor.fields:
        if fd.full_name not in out:
            out.add(fd.full_name)
            nested = _nested(fd)
            if nested is not None:
                every_field(nested, out)
    return out


def set_fields(msg: Message, out: set[str]) -> None:
    """Adds the full names of the fields ``msg`` (and the messages in it) sets."""
    for fd, value in msg.ListFields():
        out.add(fd.full_name)
        if _nested(fd) is not None:
            for item in value if fd.is_repeated else [value]:
                set_fields(item, out)


# ------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Response:
    """A resource the server returns: its domain type and both conversions."""

    domain: Any
    proto: type[Message]
    to_proto: Callable[[Any], Message]  # the server's
    from_proto: Callable[[Any], Any]  # the client's


RESPONSES = {
    "ContextRef": Response(
        ContextRef, context_ref_pb2.ContextRef, server.context_ref, client.context_ref
    ),
    "PromptTemplate": Response(
        PromptTemplate, template_pb2.PromptTemplate, server.template, client.template
    ),
    "TeacherBatch": Response(BatchView, teacher_pb2.TeacherBatch, server.batch, client.batch),
    "ProviderJob": Response(
        ProviderJobView, teacher_pb2.ProviderJob, server.provider_job, client.provider_job
    ),
    "CostEstimate": Response(
        CostEstimate,
        teacher_service_pb2.CostEstimate,
        server.cost_estimate,
        client.cost_estimate,
    ),
    "TeacherRun": Response(Run, teacher_pb2.TeacherRun, server.run, client.run),
    "RunEvent": Response(RunEvent, teacher_pb2.RunEvent, server.run_event, client.run_event),
    "DatasetManifest": Response(
        Dataset, dataset_pb2.DatasetManifest, server.dataset, client.dataset
    ),
    "EvidenceLink": Response(
        EvidenceLink, evidence_pb2.EvidenceLink, server.evidence_link, client.evidence_link
    ),
    "TeacherEndpoint": Response(
        TeacherView,
        teacher_endpoint_pb2.TeacherEndpoint,
        server.teacher_endpoint,
        client.teacher_endpoint,
    ),
}


@dataclass(frozen=True)
class Request:
    """A value the client sends: its client type and the four conversions."""

    client_type: Any
    proto: type[Message]
    to_proto: Callable[[Any], Message]  # the client's
    from_proto: Callable[[Any], Any]  # the client's
    server_from_proto: Callable[[Any], Any]
    server_to_proto: Callable[[Any], Message]


REQUESTS = {
    "GenerationParams": Request(
        client_types.GenerationParams,
        teacher_pb2.GenerationParams,
        client.params_to_proto,
        client.params_from_proto,
        server.params_from_pb,
        server.params,
    ),
    "Filter": Request(
        client_types.Filter,
        dataset_pb2.Filter,
        client.filter_to_proto,
        client.filter_from_proto,
        lambda msg: server.filter_from_pb(msg, "filters[0]"),
        server.filter_,
    ),
}


def examples(values: list[Any]) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Hypothesis ``@example`` for each of ``values``."""

    def add(test: Callable[[Any], None]) -> Callable[[Any], None]:
        for value in values:
            test = example(value)(test)
        return test

    return add


# The checks that must fail (below) fail without shrinking: faster.
_NO_SHRINK = tuple(p for p in Phase if p is not Phase.shrink)


def check(
    tp: Any,
    proto: type[Message],
    round_trip: Callable[[Any], Message],
    phases: Sequence[Phase],
) -> None:
    """``round_trip`` (which asserts, and returns the proto sent) for many
    values of ``tp``; then every field of ``proto`` must have been set."""
    seen: set[str] = set()

    @settings(max_examples=EXAMPLES, phases=phases)
    @given(values(tp))
    @examples(filled(tp))
    def each(value: Any) -> None:
        set_fields(round_trip(value), seen)

    each()
    assert_every_field_set(seen, proto.DESCRIPTOR)


def check_response(case: Response, phases: Sequence[Phase] = tuple(Phase)) -> None:
    def round_trip(domain: Any) -> Message:
        sent = case.to_proto(domain)
        assert isinstance(sent, case.proto)
        received = case.from_proto(sent)
        again = case.proto()
        encode(received, again)
        assert again == sent, f"client value differs in {_differing(sent, again)}: {received!r}"
        return sent

    check(case.domain, case.proto, round_trip, phases)


def check_request(case: Request, phases: Sequence[Phase] = tuple(Phase)) -> None:
    def round_trip(value: Any) -> Message:
        sent = case.to_proto(value)
        answered = case.server_to_proto(case.server_from_proto(sent))
        assert answered == sent, f"the server's answer differs in {_differing(sent, answered)}"
        assert case.from_proto(answered) == value, "the client reads back another value"
        return sent

    check(case.client_type, case.proto, round_trip, phases)


def _differing(a: Message, b: Message) -> list[str]:
    """The names of the top-level fields that differ between two messages."""
    return [fd.name for fd in a.DESCRIPTOR.fields if getattr(a, fd.name) != getattr(b, fd.name)]


def assert_every_field_set(seen: set[str], descriptor: Descriptor) -> None:
    never = sorted(every_field(descriptor) - seen)
    assert not never, f"never set by any example (dropped by a conversion?): {never}"


@pytest.mark.parametrize("name", sorted(RESPONSES))
def test_response_round_trip(name: str) -> None:
    check_response(RESPONSES[name])


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_request_round_trip(name: str) -> None:
    check_request(REQUESTS[name])


# ----------------------------------------------- the checks can fail at all


def _without(field: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` with ``field`` of its result left at its default."""

    def lossy(value: Any) -> Any:
        out = fn(value)
        if isinstance(out, Message):
            out.ClearField(field)
            return out
        return dataclasses.replace(out, **{field: type(getattr(out, field))()})

    return lossy


def test_a_field_the_client_drops_fails() -> None:
    case = RESPONSES["TeacherRun"]
    lossy = dataclasses.replace(case, from_proto=_without("finish_reason", case.from_proto))
    with pytest.raises(AssertionError, match=r"client value differs in \['finish_reason'\]"):
        check_response(lossy, _NO_SHRINK)


def test_a_field_the_server_drops_fails() -> None:
    case = RESPONSES["TeacherRun"]
    lossy = dataclasses.replace(case, to_proto=_without("finish_reason", case.to_proto))
    with pytest.raises(AssertionError, match=r"never set.*TeacherRun\.finish_reason"):
        check_response(lossy, _NO_SHRINK)


def test_a_request_field_the_server_drops_fails() -> None:
    case = REQUESTS["GenerationParams"]
    lossy = dataclasses.replace(case, server_to_proto=_without("seed", case.server_to_proto))
    with pytest.raises(AssertionError):
        check_request(lossy, _NO_SHRINK)
