"""Server-assigned ids: a type prefix and a time-ordered random part (like ULID),
so that ordering by id is creation order and keyset pagination needs one column."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """`<prefix>_` + 10 chars of milliseconds + 16 random chars."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{_encode(millis, 10)}{_encode(rand, 16)}"


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ids that sort in the order returned (one millisecond, a counter)."""
    millis = _encode(time.time_ns() // 1_000_000, 10)
    start = int.from_bytes(os.urandom(8), "big") >> 4  # room for the counter
    return [f"{prefix}_{millis}{_encode(start + i, 16)}" for i in range(count)]
