"""What the server and a sandbox process say to each other over the child's
stdin/stdout: length-prefixed JSON frames (never pickle: a child runs hostile
templates, and what it sends back must be plain data)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, cast

_HEADER = struct.Struct("!I")
MAX_FRAME = 2**31 - 1

# The child records which run and which template source it is working on in a
# small shared memory page, so that when it is killed the server can still name
# the run that killed it: two little-endian int32, (run index, source index);
# -1 when not rendering runs.
MARKER = struct.Struct("<ii")
MARKER_SIZE = 4096

# Every message either side sends is a JSON object: {"op": ...} requests, replies,
# the child's {"ready": pid}. Its fields depend on the op.
Message = dict[str, Any]


def encode(message: Mapping[str, Any]) -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_FRAME:
        raise ValueError(f"a sandbox message of {len(body)} bytes is too large")
    return _HEADER.pack(len(body)) + body


def header_size() -> int:
    return _HEADER.size


def body_size(header: bytes) -> int:
    (size,) = _HEADER.unpack(header)
    return int(size)


def decode(body: bytes) -> Message:
    return cast(Message, json.loads(body))


def read_frame(stream: BinaryIO) -> Message | None:
    """The next message, or None at end of stream (blocking; the child's side)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size = body_size(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return decode(body)


def write_frame(stream: BinaryIO, message: Mapping[str, Any]) -> None:
    stream.write(encode(message))
    stream.flush()
