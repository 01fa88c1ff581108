"""Distilled datasets: what a build was asked for and what it produced."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.filters import Filter
from nex.collector.server.domain.limits import MAX_PATH_COMPONENT
from nex.collector.server.domain.runs import RunError

# Matched whole (fullmatch): with `$`, "a\n" would pass and become a folder name.
_PATH_SAFE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_PATH_COMPONENT - 1}}}")


class DatasetStatus(StrEnum):
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class DatasetFile:
    """One written file of a dataset: its name in the folder, digest, rows, size."""

    name: str
    sha256: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True)
class FilterDrop:
    """How many runs filter `index` dropped (a run counts for the first filter
    that drops it)."""

    index: int
    filter: str  # the filter in words, see domain.filters.describe
    dropped: int


@dataclass(frozen=True, slots=True)
class DatasetCounts:
    total: int = 0
    kept: int = 0
    dropped: tuple[FilterDrop, ...] = ()


@dataclass(frozen=True, slots=True)
class Dataset:
    id: str
    name: str
    version: str
    status: DatasetStatus
    uri: str
    batch_ids: tuple[str, ...]
    filters: tuple[Filter, ...]
    create_time: datetime
    files: tuple[DatasetFile, ...] = ()
    counts: DatasetCounts = field(default_factory=DatasetCounts)
    error: RunError | None = None
    context_ref_id: str | None = None
    link_evidence: bool = False
    allow_empty: bool = False
    ready_time: datetime | None = None
    parts: int = 1  # >1: built in parts by several workers at once (format_version 2)


@dataclass(frozen=True, slots=True)
class BatchSource:
    """Where a dataset's runs of one batch came from: its template and teacher."""

    provider: str
    model: str
    params: dict[str, Any]
    template_id: str
    template_name: str
    template_version: int

    def manifest(self) -> dict[str, Any]:
        """As the dataset's manifest records it."""
        return {
            "provider": self.provider,
            "model": self.model,
            "params": self.params,
            "template_id": self.template_id,
            "template_name": self.template_name,
            "template_version": self.template_version,
        }


@dataclass(frozen=True, slots=True)
class DatasetPart:
    """One part of a dataset built in parts: the runs with
    first_run_id <= id < end_run_id (None: unbounded)."""

    dataset_id: str
    part: int
    first_run_id: str | None
    end_run_id: str | None
    status: str  # PART_PENDING or PART_DONE
    lease_expires: datetime | None = None
    worker_id: str | None = None
    files: tuple[DatasetFile, ...] = ()
    counts: DatasetCounts = field(default_factory=DatasetCounts)


PART_PENDING = "pending"
PART_DONE = "done"


def check_path_component(v: Violations, field_name: str, value: str) -> None:
    """Names and versions become folder names: keep them portable and safe."""
    if not value:
        v.add(field_name, "is required")
    elif not _PATH_SAFE.fullmatch(value) or value in (".", ".."):
        v.add(
            field_name,
            f"use 1-{MAX_PATH_COMPONENT} characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit",
        )
