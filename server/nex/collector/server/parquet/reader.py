"""Reads one Parquet file of a dataset as Arrow IPC messages, a row group at a
time: memory holds one row group's selected columns, whatever the file's size.

The messages (see docs/dataset-format.md, "Reading over gRPC"): first the
schema, then record batches, each an encapsulated Arrow IPC message; their
concatenation, followed by an end-of-stream marker, is an Arrow IPC stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nex.collector.server.parquet.storage import MANIFEST_NAME, Location

__all__ = [
    "ManifestMismatch",
    "OpenFile",
    "ipc_messages",
    "ipc_messages_of",
    "open_file",
    "read_manifest",
]

# Rows a record batch holds at most (fewer when they would pass the byte budget).
MAX_BATCH_ROWS = 65_536


class ManifestMismatch(Exception):
    """The manifest is missing, is another dataset's, or does not match the file."""


def read_manifest(location: Location) -> dict[str, Any]:
    try:
        raw = location.store.read_bytes(location.child(MANIFEST_NAME))
    except FileNotFoundError:
        raise ManifestMismatch(f"{MANIFEST_NAME} is missing at {location.uri}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ManifestMismatch(f"{MANIFEST_NAME} at {location.uri} is unreadable: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestMismatch(f"{MANIFEST_NAME} at {location.uri} is not an object")
    return manifest


@dataclass
class OpenFile:
    """A dataset's Parquet file, opened and checked against its manifest entry."""

    name: str
    source: pa.NativeFile
    parquet: pq.ParquetFile

    @property
    def rows(self) -> int:
        return int(self.parquet.metadata.num_rows)

    @property
    def schema(self) -> pa.Schema:
        return self.parquet.schema_arrow

    def close(self) -> None:
        self.source.close()


def open_file(location: Location, dataset_id: str, name: str, sha256: str) -> OpenFile:
    """Opens file `name` of the dataset at `location` after checking that the
    manifest there is this dataset's and lists the file with `sha256`, and
    that the object has the listed size and rows (the cheap checks; ``verify``
    recomputes the checksums)."""
    manifest = read_manifest(location)
    if manifest.get("id") != dataset_id:
        raise ManifestMismatch(
            f"{MANIFEST_NAME} at {location.uri} belongs to {manifest.get('id')!r}, not {dataset_id}"
        )
    entry = next(
        (e for e in manifest.get("files") or [] if isinstance(e, dict) and e.get("name") == name),
        None,
    )
    if entry is None or entry.get("sha256") != sha256:
        raise ManifestMismatch(f"{MANIFEST_NAME} at {location.uri} does not list {name} as built")
    path = location.child(name)
    info = location.store.info(path)
    if info.size != entry.get("bytes"):
        raise ManifestMismatch(f"{name}: {info.size} bytes, manifest says {entry.get('bytes')}")
    source = location.store.open_input(path)
    try:
        parquet = pq.ParquetFile(source)
        if parquet.metadata.num_rows != entry.get("rows"):
            raise ManifestMismatch(
                f"{name}: {parquet.metadata.num_rows} rows, manifest says {entry.get('rows')}"
            )
    except BaseException:
        source.close()
        raise
    return OpenFile(name, source, parquet)


def _batch_rows(metadata: Any, group: int, columns: Sequence[int], budget: int) -> int:
    """Rows per batch so that a batch of row group `group` is about `budget`
    bytes (uncompressed), from the Parquet metadata."""
    rg = metadata.row_group(group)
    rows = max(rg.num_rows, 1)
    size = sum(rg.column(i).total_uncompressed_size for i in columns) or 1
    return int(max(1, min(MAX_BATCH_ROWS, rows * budget // size)))


def _leaf_indices(parquet: pq.ParquetFile, columns: Sequence[str]) -> list[int]:
    """Parquet leaf column indices of the top-level `columns`."""
    schema = parquet.metadata.schema
    wanted = set(columns)
    return [i for i in range(len(schema)) if schema.column(i).path.split(".")[0] in wanted]


def _fit(batch: pa.RecordBatch, budget: int) -> Iterator[tuple[bytes, int]]:
    """`batch` as IPC messages of at most `budget` bytes each (a single row
    larger than that goes alone)."""
    message = batch.serialize()
    if message.size <= budget or batch.num_rows <= 1:
        yield message.to_pybytes(), batch.num_rows
        return
    half = batch.num_rows // 2
    yield from _fit(batch.slice(0, half), budget)
    yield from _fit(batch.slice(half), budget)


def ipc_messages(
    file: OpenFile,
    columns: Sequence[str],
    offset: int,
    limit: int,
    budget: int,
) -> Iterator[tuple[bytes, int]]:
    """(message, rows): the schema message (0 rows), then record batch messages of rows [offset,
    offset + limit) (limit 0: to the end) of `columns` (empty: all), each at
    most `budget` bytes unless a single row is larger."""
    parquet = file.parquet
    names = list(columns) or list(file.schema.names)
    schema = pa.schema([file.schema.field(n) for n in names], metadata=None)
    yield schema.serialize().to_pybytes(), 0
    end = file.rows if not limit else min(file.rows, offset + limit)
    leaves = _leaf_indices(parquet, names)
    start = 0
    for group in range(parquet.num_row_groups):
        group_rows = parquet.metadata.row_group(group).num_rows
        group_start, start = start, start + group_rows
        if start <= offset or group_rows == 0:
            continue
        if group_start >= end:
            return
        skip = max(0, offset - group_start)
        keep = min(group_rows, end - group_start) - skip
        batch_rows = _batch_rows(parquet.metadata, group, leaves, budget)
        for batch in parquet.iter_batches(
            batch_size=batch_rows, row_groups=[group], columns=names, use_threads=False
        ):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            batch = batch.select(names).slice(skip, keep)
            skip = 0
            keep -= batch.num_rows
            if batch.num_rows:
                yield from _fit(batch, budget)
            if keep <= 0:
                break


def ipc_messages_of(
    files: Sequence[OpenFile],
    columns: Sequence[str],
    offset: int,
    limit: int,
    budget: int,
) -> Iterator[tuple[bytes, int]]:
    """Like ``ipc_messages``, over `files` (the parts of one table, in order)
    read as one table: one schema message, then the rows [offset, offset +
    limit) counted across the parts."""
    if len(files) == 1:
        yield from ipc_messages(files[0], columns, offset, limit, budget)
        return
    first = True
    remaining = limit  # 0: to the end
    start = 0
    for file in files:
        file_start, start = start, start + file.rows
        local_offset = max(0, offset - file_start)
        skip_file = start <= offset or file.rows == 0
        messages = ipc_messages(
            file, columns, min(local_offset, file.rows), remaining if limit else 0, budget
        )
        schema = next(messages)
        if first:
            yield schema
            first = False
        if skip_file:
            continue
        for message, rows in messages:
            yield message, rows
            if limit:
                remaining -= rows
        if limit and remaining <= 0:
            return
