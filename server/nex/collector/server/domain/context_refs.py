"""References to NEX contexts (the reference only, never the content)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ContextRef:
    id: str
    nex_context_id: str
    nex_context_version: str
    labels: dict[str, str]
    create_time: datetime
    # When NEX confirmed the context version; None for a ref made in
    # standalone mode, which integrated mode confirms before using it.
    confirm_time: datetime | None = None
