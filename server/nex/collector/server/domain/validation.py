"""Shared input rules: names, labels, page sizes."""

from __future__ import annotations

import re
from collections.abc import Mapping

from nex.collector.server.domain.errors import Violations

MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 256
MAX_NAME = 200
MAX_REQUEST_ID = 128
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_.\-/]*$")


def check_required(v: Violations, field: str, value: str, *, max_len: int = MAX_NAME) -> None:
    if not value.strip():
        v.add(field, "is required")
    elif len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters")


def check_request_id(v: Violations, field: str, value: str) -> None:
    if len(value) > MAX_REQUEST_ID:
        v.add(field, f"must be at most {MAX_REQUEST_ID} characters")


def check_labels(v: Violations, field: str, labels: Mapping[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        v.add(field, f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
        return
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY or not _LABEL_KEY.match(key):
            v.add(
                f"{field}[{key!r}]",
                f"label keys are 1-{MAX_LABEL_KEY} characters of a-z, 0-9, _ . - /, "
                "starting with a letter",
            )
        if len(value) > MAX_LABEL_VALUE:
            v.add(f"{field}[{key!r}]", f"label values are at most {MAX_LABEL_VALUE} characters")


def page_size(v: Violations, value: int, field: str = "page_size") -> int:
    """0 means the default; negative is invalid; large values are capped."""
    if value < 0:
        v.add(field, "must not be negative")
        return DEFAULT_PAGE_SIZE
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)
