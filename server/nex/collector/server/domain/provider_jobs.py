"""Provider batch jobs as their steps read them (the view GetBatch shows:
`ProviderJobView` in domain/batches.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ProviderJob:
    """A job sent (or about to be sent) to a teacher's Batch API."""

    id: str
    batch_id: str
    teacher: str
    state: str
    provider_job_id: str | None  # the provider's id, once it created the job
    input_file_id: str | None  # the uploaded input (OpenAI), once uploaded
    request_total: int
    request_completed: int
    request_failed: int
    polls: int  # polls since the last state change; > 0 before a create: tried before
    step_failures: int  # steps failed in a row
    cancel_requested: bool
    create_time: datetime


@dataclass(frozen=True, slots=True)
class WaitingBatch:
    """A batch with runs queued for a provider job."""

    id: str
    provider: str
