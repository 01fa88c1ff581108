"""The edge check: one pass over every request message before a servicer runs.

It holds the rules that apply to every field of a kind, wherever it sits in a
request, so that no servicer can forget one:

- no NUL in any string, map key or value, or list item (PostgreSQL refuses it,
  which used to surface as INTERNAL);
- every float and double is finite;
- every string, list and map has a size cap (the numbers are in domain/limits.py);
- every id field (`id`, `*_id`, `batch_ids`) passes the one id check.

The services keep the rules of meaning (required fields, ranges, formats). Field
paths read like the services' own: ``runs[1].variables['x']``, ``filters[0].regex``.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc import aio

from nex.collector.server.api.types import Context, Handler
from nex.collector.server.domain.errors import Violations, key_path
from nex.collector.server.domain.limits import (
    MAX_BATCHES_PER_DATASET,
    MAX_FILTERS,
    MAX_KIND,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_LIST,
    MAX_NAME,
    MAX_NOTE,
    MAX_PAGE_TOKEN,
    MAX_PATTERN_LENGTH,
    MAX_REQUEST_ID,
    MAX_RUNS_PER_CALL,
    MAX_SCORE_NAME,
    MAX_SCORES,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TEMPLATE_CHARS,
    MAX_TEXT,
    MAX_VARIABLE_NAME,
    MAX_VARIABLE_VALUE,
    MAX_VARIABLES,
    MAX_VIOLATIONS,
)
from nex.collector.server.domain.validation import check_id, valid_id

# String fields by name: their most characters (anything else: MAX_TEXT).
_STRING_CAPS: dict[str, int] = {
    "request_id": MAX_REQUEST_ID,
    "page_token": MAX_PAGE_TOKEN,
    "name": MAX_NAME,
    "version": MAX_NAME,
    "model": MAX_NAME,
    "provider": MAX_NAME,
    "nex_context_id": MAX_NAME,
    "nex_context_version": MAX_NAME,
    "kind": MAX_KIND,
    "note": MAX_NOTE,
    "system_template": MAX_TEMPLATE_CHARS,
    "user_template": MAX_TEMPLATE_CHARS,
    "pattern": MAX_PATTERN_LENGTH,
}
# Repeated fields by name: (most items, most characters of a string item).
_LIST_CAPS: dict[str, tuple[int, int]] = {
    "runs": (MAX_RUNS_PER_CALL, 0),
    "filters": (MAX_FILTERS, 0),
    "stop": (MAX_STOP_SEQUENCES, MAX_STOP_LENGTH),
    "variables": (MAX_VARIABLES, MAX_VARIABLE_NAME),
    "batch_ids": (MAX_BATCHES_PER_DATASET, 0),
}
# Map fields by name: (most entries, most characters of a key, of a string value).
_MAP_CAPS: dict[str, tuple[int, int, int]] = {
    "labels": (MAX_LABELS, MAX_LABEL_KEY, MAX_LABEL_VALUE),
    "variables": (MAX_VARIABLES, MAX_VARIABLE_NAME, MAX_VARIABLE_VALUE),
    "scores": (MAX_SCORES, MAX_SCORE_NAME, 0),
}
# `*_id` fields that hold something other than one of our ids.
_NOT_OUR_IDS = frozenset({"request_id", "nex_context_id"})
_ID_LISTS = frozenset({"batch_ids"})

_FLOATS = (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT)


def _is_id(name: str) -> bool:
    return (name == "id" or name.endswith("_id")) and name not in _NOT_OUR_IDS


class _Kind(enum.Enum):
    TEXT = enum.auto()  # a string (the rule's `text` cap)
    NUMBER = enum.auto()  # a float or double: finite
    OTHER = enum.auto()  # ints, bools, enums, bytes: nothing to check here
    MESSAGE = enum.auto()


@dataclass(frozen=True, slots=True)
class _Rule:
    """What the edge checks of one field, worked out once per message type."""

    kind: _Kind  # of the value, or of a list's items / a map's values
    text: int = 0  # most characters of a string value (or item, or map value)
    is_id: bool = False  # a string value is one of our ids
    items: int = 0  # a list's or map's most entries; 0: a single value
    repeated: bool = False
    is_map: bool = False
    key_text: int = 0  # most characters of a map's string key (0: the key is no string)


def _kind(fd: FieldDescriptor) -> _Kind:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return _Kind.TEXT
    if fd.type in _FLOATS:
        return _Kind.NUMBER
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return _Kind.MESSAGE
    return _Kind.OTHER


def _rule(fd: FieldDescriptor) -> _Rule:
    name = fd.name
    entry = fd.message_type
    if entry is not None and entry.GetOptions().map_entry:
        most, key_cap, value_cap = _MAP_CAPS.get(name, (MAX_LIST, MAX_TEXT, MAX_TEXT))
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return _Rule(
            _kind(value),
            text=value_cap or MAX_TEXT,
            items=most,
            repeated=True,
            is_map=True,
            key_text=key_cap if key.type == FieldDescriptor.TYPE_STRING else 0,
        )
    if fd.is_repeated:
        most, item_cap = _LIST_CAPS.get(name, (MAX_LIST, MAX_TEXT))
        return _Rule(
            _kind(fd),
            text=item_cap or MAX_TEXT,
            is_id=name in _ID_LISTS,
            items=most,
            repeated=True,
        )
    return _Rule(_kind(fd), text=_STRING_CAPS.get(name, MAX_TEXT), is_id=_is_id(name))


_PLANS: dict[str, dict[str, _Rule]] = {}


def _plan(descriptor: Any) -> dict[str, _Rule]:  # either protobuf backend's Descriptor
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        plan = _PLANS[descriptor.full_name] = {fd.name: _rule(fd) for fd in descriptor.fields}
    return plan


class _Full(Exception):
    """Enough violations to report: stop walking."""


class _Walk:
    def __init__(self) -> None:
        self.v = Violations()

    def add(self, path: str, description: str) -> None:
        self.v.add(path, description)
        if len(self.v.items) >= MAX_VIOLATIONS:
            raise _Full

    def bad_text(self, path: str, value: str, cap: int, is_id: bool, what: str = "") -> None:
        """Adds the violation of a string that failed the quick test in `value`."""
        if "\x00" in value:
            self.add(path, f"{what}must not contain NUL characters")
        elif len(value) > cap:
            self.add(path, f"{what}must be at most {cap} characters, got {len(value)}")
        elif is_id:
            check_id(self.v, path, value)

    def value(self, path: str, rule: _Rule, value: Any) -> None:
        kind = rule.kind
        if kind is _Kind.TEXT:
            if (
                "\x00" in value
                or len(value) > rule.text
                or (rule.is_id and value and not valid_id(value))
            ):
                self.bad_text(path, value, rule.text, rule.is_id)
        elif kind is _Kind.NUMBER:
            if not math.isfinite(value):
                self.add(path, "must be a finite number")
        elif kind is _Kind.MESSAGE:
            self.message(value, f"{path}.")

    def message(self, msg: Message, prefix: str) -> None:
        plan = _plan(msg.DESCRIPTOR)
        for fd, value in msg.ListFields():
            rule = plan[fd.name]
            path = f"{prefix}{fd.name}"
            if not rule.repeated:
                self.value(path, rule, value)
            elif len(value) > rule.items:
                self.add(path, f"at most {rule.items} entries, got {len(value)}")
            elif rule.is_map:
                self.map(path, rule, value)
            elif rule.kind is not _Kind.OTHER:
                if rule.is_id:
                    for i, item in enumerate(value):
                        if not item:
                            self.add(f"{path}[{i}]", "is required")
                        else:
                            self.value(f"{path}[{i}]", rule, item)
                else:
                    for i, item in enumerate(value):
                        self.value(f"{path}[{i}]", rule, item)

    def map(self, path: str, rule: _Rule, entries: Any) -> None:
        key_cap, kind = rule.key_text, rule.kind
        for key in entries:  # faster than .items() on a protobuf map
            value = entries[key]
            if key_cap and ("\x00" in key or len(key) > key_cap):
                self.bad_text(key_path(path, key), key, key_cap, False, "keys ")
                continue
            if kind is _Kind.OTHER:
                continue
            if kind is _Kind.TEXT and "\x00" not in value and len(value) <= rule.text:
                continue  # the common case, without building the entry's path
            self.value(key_path(path, key) if key_cap else f"{path}[{key}]", rule, value)


def check_request(request: Message) -> None:
    """Raises InvalidArgument naming every field (up to MAX_VIOLATIONS) that breaks
    an edge rule."""
    walk = _Walk()
    with contextlib.suppress(_Full):
        walk.message(request, "")
    walk.v.raise_if_any()


# ignore: generic in grpc-stubs only, the runtime class is not subscriptable
class EdgeInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Runs check_request on every request of our services before the servicer.

    Registered after the ServerInterceptor, so it runs inside it: after the
    authentication check, and its InvalidArgument is mapped like any other."""

    def __init__(self, services: tuple[str, ...]) -> None:
        self._prefixes = tuple(f"/{name}/" for name in services)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(self._prefixes):
            return handler
        if handler.unary_unary:
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                check_request(request)
                return await inner(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                check_request(request)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
