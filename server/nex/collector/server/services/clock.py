"""The wall clock the use cases stamp rows with (one place to read it)."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
