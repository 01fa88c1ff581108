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
import math
from collections.abc import AsyncIterator, Awaitable, Callable
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
from nex.collector.server.domain.validation import check_id

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


class _Full(Exception):
    """Enough violations to report: stop walking."""


class _Walk:
    def __init__(self) -> None:
        self.v = Violations()

    def add(self, path: str, description: str) -> None:
        self.v.add(path, description)
        if len(self.v.items) >= MAX_VIOLATIONS:
            raise _Full

    def text(self, path: str, value: str, cap: int, what: str = "") -> bool:
        """NUL and length; True when `value` passed."""
        if "\x00" in value:
            self.add(path, f"{what}must not contain NUL characters")
            return False
        if cap and len(value) > cap:
            self.add(path, f"{what}must be at most {cap} characters, got {len(value)}")
            return False
        return True

    def scalar(self, path: str, name: str, fd: FieldDescriptor, value: Any, cap: int) -> None:
        if fd.type == FieldDescriptor.TYPE_STRING:
            if self.text(path, value, cap) and _is_id(name):
                check_id(self.v, path, value, required=False)
        elif fd.type in _FLOATS and not math.isfinite(value):
            self.add(path, "must be a finite number")

    def message(self, msg: Message, prefix: str) -> None:
        for fd, value in msg.ListFields():
            name = fd.name
            path = f"{prefix}{name}"
            if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
                self.map(path, name, fd, value)
            elif fd.is_repeated:
                self.list(path, name, fd, value)
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                self.message(value, f"{path}.")
            else:
                self.scalar(path, name, fd, value, _STRING_CAPS.get(name, MAX_TEXT))

    def list(self, path: str, name: str, fd: FieldDescriptor, items: Any) -> None:
        most, item_cap = _LIST_CAPS.get(name, (MAX_LIST, MAX_TEXT))
        if len(items) > most:
            self.add(path, f"at most {most} items, got {len(items)}")
            return
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]"
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                self.message(item, f"{item_path}.")
            elif name in _ID_LISTS:
                if self.text(item_path, item, 0):
                    check_id(self.v, item_path, item)
            else:
                self.scalar(item_path, name, fd, item, item_cap or MAX_TEXT)

    def map(self, path: str, name: str, fd: FieldDescriptor, entries: Any) -> None:
        assert fd.message_type is not None  # a map field's entry type
        most, key_cap, value_cap = _MAP_CAPS.get(name, (MAX_LIST, MAX_TEXT, MAX_TEXT))
        if len(entries) > most:
            self.add(path, f"at most {most} entries, got {len(entries)}")
            return
        value_fd = fd.message_type.fields_by_name["value"]
        for key, value in entries.items():
            entry = key_path(path, key) if isinstance(key, str) else f"{path}[{key}]"
            if isinstance(key, str) and not self.text(entry, key, key_cap, "keys "):
                continue
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                self.message(value, f"{entry}.")
            else:
                self.scalar(entry, name, value_fd, value, value_cap or MAX_TEXT)


def check_request(request: Message) -> None:
    """Raises InvalidArgument naming every field (up to MAX_VIOLATIONS) that breaks
    an edge rule."""
    walk = _Walk()
    with contextlib.suppress(_Full):
        walk.message(request, "")
    walk.v.raise_if_any()


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
        method: str = details.method  # type: ignore[attr-defined]
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
