"""Builds a dataset from a stream of completed runs: score, filter, write.

Memory stays flat whatever the dataset's size: the builder holds the chunk
being fetched, the chunk being processed, the row group being filled and the
row group being written (``row_group_size`` examples each, fewer when their
estimated size reaches ``max_row_group_bytes``).

Three threads share the work, each in order: the event loop fetches chunk
n + 1 while a worker thread scores, filters and converts chunk n to Arrow,
while the writer thread encodes, compresses and hashes the previous row group
(which releases the GIL). The event loop stays responsive throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from nex.collector.server.domain.datasets import FilterDrop
from nex.collector.server.domain.filters import Filter, FilterChain, describe, filter_to_dict
from nex.collector.server.domain.scoring import MetricRegistry, compute_scores
from nex.collector.server.domain.teacher import CompletedRun
from nex.collector.server.parquet.columns import ChunkTables, LogprobColumns, estimated_bytes
from nex.collector.server.parquet.schema import SCHEMAS
from nex.collector.server.parquet.storage import Location
from nex.collector.server.parquet.writer import (
    RESERVED_MANIFEST_KEYS,
    BuildResult,
    DatasetExistsError,
    DatasetWriter,
    json_default,
    remove_stale_staging,
)

__all__ = ["DEFAULT_MAX_ROW_GROUP_BYTES", "DEFAULT_ROW_GROUP_SIZE", "Progress", "build_dataset"]

DEFAULT_ROW_GROUP_SIZE = 10_000
DEFAULT_MAX_ROW_GROUP_BYTES = 64 << 20

Progress = Callable[[int, int], "Awaitable[None] | None"]
"""Called after each chunk with (runs seen so far, runs kept so far)."""


class _RowGroup:
    """The examples buffered for the next row group, as table slices per file."""

    def __init__(self) -> None:
        self.parts: dict[str, list[pa.Table]] = {name: [] for name in SCHEMAS}
        self.rows = 0
        self.bytes = 0

    def add(self, tables: Mapping[str, pa.Table], rows: int, size: int) -> None:
        for name, table in tables.items():
            self.parts[name].append(table)
        self.rows += rows
        self.bytes += size

    def tables(self) -> dict[str, pa.Table]:
        return {
            name: pa.concat_tables(parts) if parts else SCHEMAS[name].empty_table()
            for name, parts in self.parts.items()
        }


class _Build:
    """The synchronous part of a build; called from one thread, in order."""

    def __init__(
        self,
        chain: FilterChain,
        metrics: MetricRegistry,
        writer: DatasetWriter,
        row_group_size: int,
        max_row_group_bytes: int,
    ) -> None:
        self.chain = chain
        self.metrics = metrics
        self.writer = writer
        self.row_group_size = row_group_size
        self.max_row_group_bytes = max_row_group_bytes
        self.total = 0
        self.kept = 0
        self.dropped = [0] * len(chain)
        self.group = _RowGroup()

    def add_chunk(self, runs: Sequence[CompletedRun]) -> None:
        if not runs:
            return
        logprobs = LogprobColumns(runs)
        kept: list[int] = []
        kept_scores: list[dict[str, float]] = []
        for i, run in enumerate(runs):
            scores = compute_scores(run, self.metrics, entropy=logprobs.mean_entropy[i])
            rejected = self.chain.first_rejecting(run, scores)
            if rejected is None:
                kept.append(i)
                kept_scores.append(scores)
            else:
                self.dropped[rejected] += 1
        self.total += len(runs)
        self.kept += len(kept)
        if not kept:
            return
        tables = ChunkTables(runs, kept, kept_scores, logprobs)
        sizes = [estimated_bytes(runs[i]) for i in kept]
        start = 0
        while start < len(kept):
            # Fill the current row group; it always takes at least one example.
            stop = start
            size = 0
            while (
                stop < len(kept)
                and self.group.rows + (stop - start) < self.row_group_size
                and (stop == start or self.group.bytes + size < self.max_row_group_bytes)
            ):
                size += sizes[stop]
                stop += 1
            self.group.add(tables.slice(start, stop), stop - start, size)
            start = stop
            if (
                self.group.rows >= self.row_group_size
                or self.group.bytes >= self.max_row_group_bytes
            ):
                self.flush()

    def flush(self) -> None:
        if self.group.rows:
            self.writer.write_row_group(self.group.tables())
        self.group = _RowGroup()

    def drops(self) -> list[FilterDrop]:
        return [
            FilterDrop(i, describe(f), n)
            for i, (f, n) in enumerate(zip(self.chain.filters, self.dropped, strict=True))
        ]

    def finish(self, manifest_extra: Mapping[str, Any]) -> BuildResult:
        self.flush()
        if self.writer.part is not None:
            return self.writer.finish_part(total=self.total, kept=self.kept, dropped=self.drops())
        return self.writer.commit(
            total=self.total,
            kept=self.kept,
            dropped=self.drops(),
            filters=[filter_to_dict(f) for f in self.chain.filters],
            manifest_extra=manifest_extra,
        )


class EmptyDatasetError(Exception):
    """The filters kept no run, and the build did not allow an empty dataset."""

    def __init__(self, total: int, dropped: Sequence[FilterDrop]) -> None:
        worst = max(dropped, key=lambda d: d.dropped, default=None)
        why = f"; {worst.filter} dropped {worst.dropped}" if worst and worst.dropped else ""
        super().__init__(
            f"the filters kept 0 of {total} runs{why}; nothing was written and the version "
            "stays free: loosen the filters, or build with allow_empty"
        )


def _discard(
    executor: ThreadPoolExecutor, pending: Future[None] | None, writer: DatasetWriter
) -> None:
    """After a failed or cancelled build: waits for the chunk in flight, then
    removes the staging folder. Blocking; runs in a thread."""
    executor.shutdown(wait=True, cancel_futures=True)
    if pending is not None and pending.done() and not pending.cancelled():
        with contextlib.suppress(BaseException):
            pending.exception()  # retrieved: no "never retrieved" warning
    writer.abort()


def _open_writer(
    final: Location, clean_stale: bool, part: int | None, staging: str | None
) -> DatasetWriter:
    if final.store.committed(final.path):
        raise DatasetExistsError(f"dataset {final.uri} exists; a version never changes")
    if clean_stale and part is None:
        remove_stale_staging(final)
    return DatasetWriter(final, staging=staging, part=part)


async def _report(progress: Progress | None, build: _Build) -> None:
    if progress is None:
        return
    result = progress(build.total, build.kept)
    if inspect.isawaitable(result):
        await result


async def build_dataset(
    chunks: AsyncIterable[Sequence[CompletedRun]],
    *,
    filters: Sequence[Filter],
    metrics: MetricRegistry,
    final_dir: Path | Location,
    manifest_extra: Mapping[str, Any],
    progress: Progress | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    max_row_group_bytes: int = DEFAULT_MAX_ROW_GROUP_BYTES,
    clean_stale: bool = True,
    allow_empty: bool = True,
    part: int | None = None,
    staging: str | None = None,
) -> BuildResult:
    """Scores and filters the runs of `chunks` (in the order given) and writes
    the dataset into `final_dir` (a local folder, or a Location in any store),
    which appears, complete, only on success (its manifest last).

    Raises InvalidFiltersError before touching the disk if a filter is
    invalid, DatasetExistsError if `final_dir` exists, ValueError if
    `manifest_extra` uses a key the builder writes itself; on any error
    (including cancellation) the staging folder is removed and the error
    re-raised. `clean_stale` first removes staging folders of earlier,
    killed attempts at the same `final_dir`. Unless `allow_empty`, a build
    whose filters keep no run raises EmptyDatasetError and writes nothing.

    With `part` (a build in parts): writes only that part's files
    (``<table>/part-NNNNN.parquet``) into the shared `staging` folder and
    returns them without a manifest (see ``writer.commit_parts``); on error
    only this part's files are removed, and `clean_stale` does nothing.
    """
    if row_group_size < 1 or max_row_group_bytes < 1:
        raise ValueError("row_group_size and max_row_group_bytes must be positive")
    clash = RESERVED_MANIFEST_KEYS & set(manifest_extra)
    if clash:
        raise ValueError(f"manifest_extra may not set {sorted(clash)}: the builder writes them")
    json.dumps(manifest_extra, default=json_default)  # fail now, not after the whole build
    chain = FilterChain(filters)
    final = final_dir if isinstance(final_dir, Location) else Location.local(final_dir)
    writer = await asyncio.to_thread(_open_writer, final, clean_stale, part, staging)
    build = _Build(chain, metrics, writer, row_group_size, max_row_group_bytes)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataset-build")
    pending: Future[None] | None = None
    iterator = aiter(chunks)
    try:
        async for chunk in iterator:
            if pending is not None:
                await asyncio.wrap_future(pending)
                await _report(progress, build)
            pending = executor.submit(build.add_chunk, list(chunk))
        if pending is not None:
            await asyncio.wrap_future(pending)
            await _report(progress, build)
        pending = None
        if not allow_empty and build.kept == 0:
            raise EmptyDatasetError(build.total, build.drops())
        return await asyncio.wrap_future(executor.submit(build.finish, manifest_extra))
    except BaseException:
        # A chunk may still be in the thread: let it finish before deleting its
        # folder. Both block, so they run in a thread of their own; shielded, so a
        # second cancellation cannot leave the folder behind.
        cleanup = asyncio.ensure_future(asyncio.to_thread(_discard, executor, pending, writer))
        with contextlib.suppress(BaseException):
            await asyncio.shield(cleanup)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:  # release the caller's cursor now, not at garbage collection
            with contextlib.suppress(Exception):
                await aclose()
        raise
    finally:
        executor.shutdown(wait=False)
