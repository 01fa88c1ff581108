"""Evidence links from datasets or runs back to NEX contexts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class EvidenceStatus(StrEnum):
    PENDING = "pending"
    POSTED = "posted"


@dataclass(frozen=True, slots=True)
class EvidenceLink:
    id: str
    context_ref_id: str
    dataset_id: str | None
    run_id: str | None
    kind: str
    note: str
    status: EvidenceStatus
    attempts: int
    last_error: str | None
    create_time: datetime
    post_time: datetime | None = None


def retry_delay(attempts: int) -> timedelta:
    """After `attempts` failed deliveries: 1 s, 2 s, 4 s … at most 5 minutes."""
    return timedelta(seconds=min(300.0, 2.0 ** max(attempts - 1, 0)))
