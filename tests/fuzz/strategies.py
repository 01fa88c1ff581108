"""Hypothesis strategies for every request of every service, derived from the
protobuf descriptors, so an RPC or field added later is fuzzed without a change
here. Each field mixes values that should work (ids of real rows, names the
server accepts) with hostile ones: NUL and control characters, line and
paragraph separators, path traversal, huge strings, non-finite and extreme
numbers, unknown enum values, long lists and maps.

Template bodies never hold Jinja expressions: hostile templates are the template
sandbox's own property tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

HOSTILE_TEXT: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\n",
    "a\n",
    "a\r\n",
    "\u2028",
    "a\u2029b",
    "\u0085",
    "..",
    "../../etc/passwd",
    "a/b",
    "%00",
    "\ufeff",
    "\U0001f600",
    "é" * 70,
    "' OR 1=1 --",
    "\x1f",
    "\\",
)
HUGE_SIZES = (129, 257, 4097, 70_000, 1 << 20)


def huge_text(limit: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda char, size: char * size,
        st.sampled_from(["x", "é", "\x00", "\n", "😀"]),
        st.sampled_from([n for n in HUGE_SIZES if n <= limit] or [limit]),
    )


def hostile_text(limit: int = 1 << 20) -> st.SearchStrategy[str]:
    """Hostile strings of at most `limit` characters (a list of a thousand
    megabyte strings would test the machine, not the server)."""
    return st.one_of(
        st.sampled_from(HOSTILE_TEXT),
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
        huge_text(limit),
    )


def _no_jinja(text: str) -> str:
    return text.replace("{", "(").replace("}", ")").replace("%", "pct").replace("#", "no")


@dataclass
class Pools:
    """Values that name real rows, so that calls also get past the first checks."""

    ids: Sequence[str]
    names: Sequence[str] = ("fuzz", "n1", "v1", "a.b-c_d")
    variables: Sequence[str] = ("x",)
    extra: Mapping[str, Sequence[Any]] = field(default_factory=dict)


def _id_like(pools: Pools, limit: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(list(pools.ids)),
        st.sampled_from(["ctx_missing", "bat_0000000000missing00000", "x" * 64, "x" * 65]),
        hostile_text(limit),
    )


# Field names whose good values are a small known set.
_KNOWN: dict[str, Sequence[str]] = {
    "provider": ("mock", "openai", "anthropic", "gemini"),
    "model": ("mock-1", "gpt-4o-mini"),
    "kind": ("evidence", "distillation_dataset"),
}
_TEMPLATES = ("{{ x }}", "Explain {{ x }}.", "plain text", "")


def string_for(name: str, pools: Pools, limit: int) -> st.SearchStrategy[str]:
    hostile = hostile_text(limit)
    if name in ("system_template", "user_template"):
        return st.one_of(st.sampled_from(_TEMPLATES), hostile.map(_no_jinja))
    if name in pools.extra:
        return st.one_of(st.sampled_from(list(pools.extra[name])), hostile)
    if name == "id" or (name.endswith("_id") and name not in ("request_id", "nex_context_id")):
        return _id_like(pools, limit)
    if name == "batch_ids":
        return _id_like(pools, limit)
    if name in _KNOWN:
        return st.one_of(st.sampled_from(list(_KNOWN[name])), hostile)
    if name == "variables":
        return st.one_of(st.sampled_from(list(pools.variables)), hostile)
    return st.one_of(st.sampled_from(list(pools.names)), st.uuids().map(str), hostile)


def floats() -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from([math.inf, -math.inf, math.nan, -0.0, 0.0, 1e308, -1e308, 5e-324]),
        st.floats(min_value=-3, max_value=3),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def ints(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    return st.one_of(
        st.sampled_from([low, high, -1, 0, 1, 2, 5, 20, 21, 1000, 1001]),
        st.integers(low, high),
    )


def _scalar(fd: FieldDescriptor, name: str, pools: Pools, limit: int) -> st.SearchStrategy[Any]:
    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        return string_for(name, pools, limit)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return floats()
    if t == FieldDescriptor.TYPE_ENUM:
        assert fd.enum_type is not None
        known = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), ints(INT32))  # proto3 enums are open
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return ints(INT64)
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return ints((0, 2**64 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return ints((0, 2**32 - 1))
    return ints(INT32)


def _sizes(small: int) -> st.SearchStrategy[int]:
    """Mostly small, sometimes just over a cap, sometimes large."""
    return st.one_of(st.integers(0, small), st.sampled_from([5, 33, 65, 101, 257]), st.just(1001))


# Longest string drawn at the top of a request, inside a list, inside a long list.
TOP_LIMIT, LIST_LIMIT, LONG_LIST_LIMIT = 1 << 20, 4097, 40


@st.composite
def _list(draw: st.DrawFn, element: Any, limit: int, small: int = 3) -> list[Any]:
    """A list whose items come from `element(item_limit)`; `limit` is the one of
    the value holding the list, so nested lists shrink and a request stays at a
    few megabytes at most."""
    size = draw(_sizes(small) if limit >= LIST_LIMIT else st.integers(0, small))
    if size > 64:  # a long list of one cheap value: this tests the cap, not the content
        return [draw(element(LONG_LIST_LIMIT))] * size
    item = element(LIST_LIMIT if limit >= TOP_LIMIT else max(limit // 8, 1))
    return [draw(item) for _ in range(size)]


def message(
    descriptor: Descriptor, pools: Pools, depth: int = 0, limit: int = TOP_LIMIT
) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for the message class of `descriptor`."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    oneofs = {o.name: [f.name for f in o.fields] for o in descriptor.oneofs}
    in_oneof = {name for names in oneofs.values() for name in names}
    for fd in descriptor.fields:
        if fd.name in in_oneof:
            continue
        parts[fd.name] = st.one_of(st.none(), _field(fd, pools, depth, limit))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        kwargs = {k: v for k, v in ((k, draw(s)) for k, s in parts.items()) if v is not None}
        for names in oneofs.values():
            chosen = draw(st.sampled_from([None, *names]))
            if chosen is not None:
                fd = descriptor.fields_by_name[chosen]
                value = draw(_field(fd, pools, depth, limit))
                if value is not None:  # google.protobuf.* members are not drawn
                    kwargs[chosen] = value
        return kwargs

    return build()


def _field(fd: FieldDescriptor, pools: Pools, depth: int, limit: int) -> st.SearchStrategy[Any]:
    mt = fd.message_type
    if mt is not None and mt.GetOptions().map_entry:
        key_fd, value_fd = mt.fields_by_name["key"], mt.fields_by_name["value"]

        def entry(item_limit: int) -> st.SearchStrategy[tuple[Any, Any]]:
            key = _scalar(key_fd, fd.name, pools, item_limit)
            if fd.name == "variables":
                key = st.one_of(st.sampled_from(list(pools.variables)), hostile_text(item_limit))
            return st.tuples(key, _scalar(value_fd, f"{fd.name}.value", pools, item_limit))

        return _list(entry, limit).map(dict)
    if mt is not None:
        if mt.full_name.startswith("google.protobuf.") or depth > 3:
            return st.none()
        if fd.is_repeated:
            return _list(lambda item_limit: message(mt, pools, depth + 1, item_limit), limit)
        return message(mt, pools, depth + 1, limit)
    if fd.is_repeated:
        return _list(lambda item_limit: _scalar(fd, fd.name, pools, item_limit), limit)
    return _scalar(fd, fd.name, pools, limit)


def request(cls: type[Message], pools: Pools) -> st.SearchStrategy[Message]:
    """Requests of type `cls`: fields built from their descriptors."""
    descriptor: Any = cls.DESCRIPTOR
    return message(descriptor, pools).map(lambda kwargs: _make(cls, kwargs))


def _make(cls: type[Message], kwargs: dict[str, Any]) -> Message:
    msg = cls()
    _fill(msg, kwargs)
    return msg


def _fill(msg: Message, kwargs: dict[str, Any]) -> None:
    for name, value in kwargs.items():
        fd = msg.DESCRIPTOR.fields_by_name[name]
        mt = fd.message_type
        target = getattr(msg, name)
        if mt is not None and mt.GetOptions().map_entry:
            value_fd = mt.fields_by_name["value"]
            for k, v in value.items():
                if value_fd.message_type is not None:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif mt is not None and fd.is_repeated:
            for item in value:
                _fill(target.add(), item)
        elif mt is not None:
            target.SetInParent()
            _fill(target, value)
        elif fd.is_repeated:
            target.extend(value)
        else:
            setattr(msg, name, value)
