"""Shared input rules: ids, names, labels, page sizes.

Patterns are matched whole (`fullmatch`): `$` would also match before a
trailing newline, so `"a\\n"` would pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from nex.collector.server.domain.errors import Violations, key_path
from nex.collector.server.domain.limits import (
    DEFAULT_PAGE_SIZE,
    MAX_ID,
    MAX_LABEL_KEY,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_NAME,
    MAX_PAGE_SIZE,
    MAX_REQUEST_ID,
)

__all__ = [
    "check_id",
    "check_labels",
    "check_request_id",
    "check_required",
    "check_url_segment",
    "page_size",
    "storable_text",
    "storable_texts",
    "valid_id",
]

_LABEL_KEY = re.compile(r"[a-z][a-z0-9_.\-/]*")
# What the ids we issue are made of (see ids.py), kept loose enough that a
# well-formed id we never issued is NOT_FOUND rather than INVALID_ARGUMENT.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def valid_id(value: str) -> bool:
    return len(value) <= MAX_ID and _ID.fullmatch(value) is not None


def storable_text(value: str) -> str:
    """Text from outside a request (a teacher's output) as PostgreSQL can store it:
    a NUL, which it refuses, becomes U+FFFD."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def storable_texts(values: Sequence[str]) -> Sequence[str]:
    """storable_text for each of `values` (the same sequence when none has a NUL)."""
    if not any("\x00" in value for value in values):
        return values
    return [storable_text(value) for value in values]


def check_id(v: Violations, field: str, value: str, *, required: bool = True) -> None:
    """The one id check: every id field a caller sends goes through it."""
    if not value:
        if required:
            v.add(field, "is required")
    elif not valid_id(value):
        v.add(field, "is not an id this service issued")


def check_required(v: Violations, field: str, value: str, *, max_len: int = MAX_NAME) -> None:
    if not value.strip():
        v.add(field, "is required")
    elif len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters")


def check_url_segment(v: Violations, field: str, value: str) -> None:
    """A value sent to NEX as one URL path segment: percent-encoding keeps it one
    segment, except "." and "..", which an HTTP client resolves as dot-segments."""
    if value.strip() in (".", ".."):
        v.add(field, "must not be . or .. (it is a path segment of a NEX URL)")


def check_request_id(v: Violations, field: str, value: str) -> None:
    if len(value) > MAX_REQUEST_ID:
        v.add(field, f"must be at most {MAX_REQUEST_ID} characters")


def check_labels(v: Violations, field: str, labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        v.add(field, f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
        return
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.fullmatch(key):
            v.add(
                key_path(field, key),
                f"label keys are 1-{MAX_LABEL_KEY} characters of a-z, 0-9, _ . - /, "
                "starting with a letter",
            )
        if len(value) > MAX_LABEL_VALUE:
            v.add(key_path(field, key), f"label values are at most {MAX_LABEL_VALUE} characters")


def page_size(v: Violations, value: int, field: str = "page_size") -> int:
    """0 means the default; negative is invalid; large values are capped."""
    if value < 0:
        v.add(field, "must not be negative")
        return DEFAULT_PAGE_SIZE
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)
