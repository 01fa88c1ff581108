"""Writes a dataset folder: five Parquet files and manifest.json, staged in a
hidden sibling folder and renamed into place only once complete.

Nothing here reads a clock or a random source except the staging folder's
name, so the same rows give byte-identical Parquet files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nex.collector.server.domain.datasets import DatasetFile, FilterDrop
from nex.collector.server.parquet.schema import (
    FILE_NAMES,
    FORMAT_VERSION,
    PARTS_FORMAT_VERSION,
    SCHEMAS,
)
from nex.collector.server.parquet.storage import (
    DIR_MODE,
    FILE_MODE,
    MANIFEST_NAME,
    STAGING_MARK,
    Location,
    make_dirs,
)

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MANIFEST_NAME",
    "RESERVED_MANIFEST_KEYS",
    "BuildResult",
    "DatasetExistsError",
    "DatasetWriter",
    "commit_parts",
    "json_default",
    "make_dirs",
    "part_file_name",
    "parts_staging",
    "remove_stale_staging",
    "sha256_file",
    "staging_dir_for",
]

RESERVED_MANIFEST_KEYS = frozenset({"counts", "files", "filters", "format_version", "parts", "uri"})


def part_file_name(table: str, part: int) -> str:
    """A part's file of `table` in the parts layout (format_version 2)."""
    return f"{table}/part-{part:05d}.parquet"


def parts_staging(final: Location, dataset_id: str) -> str:
    """The staging folder all parts of one build share (named by the build,
    so every worker finds it)."""
    parent, name = final.path.rsplit("/", 1)
    return f"{parent}/.{name}{STAGING_MARK}{dataset_id}"


# Dictionary-encode only the strings that repeat (vocabulary tokens, names);
# unique strings and doubles gain nothing and cost time.
_DICTIONARY_COLUMNS = {
    "examples": ["batch_id", "template_id", "provider", "teacher_model", "finish_reason"],
    "inputs": ["variables.list.element.key", "messages.list.element.role"],
    "teacher": [
        "provider",
        "model",
        "finish_reason",
        "tokens.list.element",
        "top_tokens.list.element",
    ],
    "targets": [
        "teacher_model",
        "y_probs.list.element.list.element.token",
        "y_scores.list.element.key",
    ],
    "scores": ["name", "source"],
}


# Statistics (min/max) only where a reader can use them to skip row groups:
# top-level scalar columns, not per-token leaves.
_STATISTICS_COLUMNS = {
    "examples": [field.name for field in SCHEMAS["examples"]],
    "inputs": ["example_id"],
    "teacher": [
        "example_id",
        "provider",
        "model",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "latency_ms",
    ],
    "targets": ["example_id", "teacher_model", "has_soft_labels"],
    "scores": [field.name for field in SCHEMAS["scores"]],
}


class DatasetExistsError(FileExistsError):
    """The dataset folder exists already: a built version never changes."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    files: list[DatasetFile]
    total: int
    kept: int
    dropped: list[FilterDrop]
    uri: str


def staging_dir_for(final_dir: Path) -> Path:
    return final_dir.parent / f".{final_dir.name}{STAGING_MARK}{secrets.token_hex(6)}"


def remove_stale_staging(final_dir: Path | Location) -> list[str]:
    """Removes what builds of this dataset left when they died without cleaning
    up (a worker killed with SIGKILL): staging folders and, on an object
    store, files without a manifest. Only safe while no other build of the
    same dataset runs, which the dataset's unique (name, version) and its
    build lease ensure."""
    location = _location(final_dir)
    return location.store.remove_uncommitted(location.path)


def _location(final: Path | Location) -> Location:
    return final if isinstance(final, Location) else Location.local(final)


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def json_default(value: Any) -> Any:
    """JSON for the few non-JSON types a manifest may reasonably carry."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON: {value!r}")


class _HashingSink(io.RawIOBase):
    """An append-only file that hashes what goes through it, so checksums cost
    no second pass over the files (and are computed in the writer thread)."""

    def __init__(self, file: Any) -> None:
        super().__init__()
        self._file = file  # a local file (unbuffered) or a pyarrow output stream
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)  # releases the GIL for large buffers
        written = 0
        while written < len(view):
            written += self._file.write(view[written:]) or 0
        self.size += written
        return written

    def close(self) -> None:
        if not self._file.closed:
            if hasattr(self._file, "fileno") and not isinstance(self._file, pa.NativeFile):
                os.fsync(self._file.fileno())
            self._file.close()
        super().close()


class _TableFile:
    """One Parquet file of the dataset being written."""

    def __init__(self, location: Location, table: str, part: int | None = None) -> None:
        self.name = FILE_NAMES[table] if part is None else part_file_name(table, part)
        self.rows = 0
        path = location.child(self.name)
        if part is not None:
            store = location.store
            if store.is_local:
                make_dirs(Path(path).parent)
                Path(path).unlink(missing_ok=True)  # an earlier, dead attempt at this part
            elif store.exists(path):
                store.fs.delete_file(path)
        self.sink = _HashingSink(location.store.create(path))
        try:
            self.writer = pq.ParquetWriter(
                self.sink,
                SCHEMAS[table],
                compression="zstd",
                use_dictionary=_DICTIONARY_COLUMNS[table],
                write_statistics=_STATISTICS_COLUMNS[table],
                store_schema=True,
            )
        except BaseException:
            self.sink.close()
            raise

    def write(self, table: pa.Table) -> None:
        # Contiguous rows: the bytes written must not depend on how rows were chunked.
        table = table.combine_chunks()
        if table.num_rows:
            self.writer.write_table(table, row_group_size=table.num_rows)
            self.rows += table.num_rows

    def close(self) -> DatasetFile:
        try:
            self.writer.close()
        finally:
            self.sink.close()  # fsyncs
        return DatasetFile(self.name, self.sink.digest.hexdigest(), self.rows, self.sink.size)


class DatasetWriter:
    """The five Parquet writers of one build, in a staging folder.

    Each ``write_row_group`` call writes exactly one row group per file.
    ``commit`` closes the files (fsynced on a local disk), then puts them and
    manifest.json (with each file's sha256, computed while writing) in place,
    the manifest last (see ``storage``); ``abort`` removes the staging folder.
    """

    def __init__(
        self, final_dir: Path | Location, *, staging: str | None = None, part: int | None = None
    ) -> None:
        """With `part`: writes that part's files (see ``part_file_name``) into
        the shared `staging` folder; ``finish_part`` closes them, and the
        manifest is written once every part is done (``commit_parts``)."""
        self.location = _location(final_dir)
        self.part = part
        store = self.location.store
        if store.committed(self.location.path):
            raise DatasetExistsError(f"dataset {self.location.uri} exists; a version never changes")
        if part is None:
            self.staging = Location(store, store.make_staging(self.location.path))
        else:
            if staging is None:
                raise ValueError("a part is written into the build's shared staging folder")
            if store.is_local:
                make_dirs(Path(staging))
            self.staging = Location(store, staging)
        self._files: dict[str, _TableFile] = {}
        # Encoding, compression and hashing release the GIL: one background thread
        # writes row group n while the caller prepares row group n + 1.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending: Future[None] | None = None
        try:
            for table in SCHEMAS:
                self._files[table] = _TableFile(self.staging, table, part)
        except BaseException:
            self.abort()
            raise

    @property
    def final_dir(self) -> Path:
        """The final folder of a local dataset."""
        return Path(self.location.path)

    @property
    def staging_dir(self) -> Path:
        """The staging folder of a local dataset."""
        return Path(self.staging.path)

    def write_row_group(self, tables: Mapping[str, pa.Table]) -> None:
        """Queues one row group per file from `tables` (table name → rows, possibly
        in several chunks); waits for the previous row group first, so at most
        one is in flight. Errors of a write surface on the next call or in commit."""
        self._wait()
        self._pending = self._executor.submit(self._write, dict(tables))

    def _write(self, tables: Mapping[str, pa.Table]) -> None:
        for table, file in self._files.items():
            file.write(tables[table])

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def finish_part(self, *, total: int, kept: int, dropped: Sequence[FilterDrop]) -> BuildResult:
        """Closes this part's files in the shared staging folder (no manifest)."""
        self._wait()
        self._executor.shutdown()
        files = self._close_files()
        return BuildResult(
            files=files, total=total, kept=kept, dropped=list(dropped), uri=self.location.uri
        )

    def commit(
        self,
        *,
        total: int,
        kept: int,
        dropped: Sequence[FilterDrop],
        filters: Sequence[Mapping[str, Any]],
        manifest_extra: Mapping[str, Any],
    ) -> BuildResult:
        self._wait()
        self._executor.shutdown()
        files = self._close_files()
        store = self.location.store
        for info in files:
            size = store.info(self.staging.child(info.name)).size
            if size != info.bytes:  # pragma: no cover - would be a bug in the sink
                raise OSError(f"{info.name}: wrote {info.bytes} bytes but the file has {size}")
        return _commit(
            self.location,
            self.staging.path,
            files=files,
            total=total,
            kept=kept,
            dropped=dropped,
            filters=filters,
            manifest_extra=manifest_extra,
        )

    def abort(self) -> None:
        """Closes what is open and removes the staging folder; never raises.
        Blocks until a row group being written is done."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(BaseException):
            self._wait()
        with contextlib.suppress(Exception):
            self._close_files()
        with contextlib.suppress(Exception):
            if self.part is None:
                self.location.store.delete_tree(self.staging.path)
            else:  # the other parts' files stay
                for table in SCHEMAS:
                    path = self.staging.child(part_file_name(table, self.part))
                    if self.location.store.exists(path):
                        self.location.store.fs.delete_file(path)

    def _close_files(self) -> list[DatasetFile]:
        files, self._files = self._files, {}
        infos = []
        errors = []
        for file in files.values():
            try:
                infos.append(file.close())
            except Exception as exc:  # close them all, then report
                errors.append(exc)
        if errors:
            raise errors[0]
        return infos


def _commit(
    location: Location,
    staging: str,
    *,
    files: Sequence[DatasetFile],
    total: int,
    kept: int,
    dropped: Sequence[FilterDrop],
    filters: Sequence[Mapping[str, Any]],
    manifest_extra: Mapping[str, Any],
    parts: int | None = None,
) -> BuildResult:
    uri = location.uri
    manifest: dict[str, Any] = dict(manifest_extra)
    manifest.update(
        format_version=FORMAT_VERSION if parts is None else PARTS_FORMAT_VERSION,
        uri=uri,
        files=[
            {"name": f.name, "sha256": f.sha256, "rows": f.rows, "bytes": f.bytes} for f in files
        ],
        counts={
            "total": total,
            "kept": kept,
            "dropped": [
                {"index": d.index, "filter": d.filter, "dropped": d.dropped} for d in dropped
            ],
        },
        filters=list(filters),
    )
    if parts is not None:
        manifest["parts"] = parts
    text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, default=json_default)
    try:
        location.store.commit(
            staging, location.path, [f.name for f in files], (text + "\n").encode("utf-8")
        )
    except FileExistsError as exc:
        raise DatasetExistsError(str(exc)) from None
    return BuildResult(files=list(files), total=total, kept=kept, dropped=list(dropped), uri=uri)


def commit_parts(
    location: Location,
    staging: str,
    parts: Sequence[BuildResult],
    *,
    filters: Sequence[Mapping[str, Any]],
    manifest_extra: Mapping[str, Any],
) -> BuildResult:
    """Writes the manifest of a build in parts once every part is written in
    the shared `staging` folder (files listed by kind, then part; the counts
    summed), and puts the dataset in place, the manifest last. Blocking.
    Raises DatasetExistsError when the dataset is in place already."""
    if location.store.committed(location.path):
        raise DatasetExistsError(f"dataset {location.uri} exists; a version never changes")
    by_name = {f.name: f for p in parts for f in p.files}
    files = []
    for table in SCHEMAS:
        for i in range(len(parts)):
            name = part_file_name(table, i)
            if name not in by_name:
                raise OSError(f"part {i} did not record {name}")
            info = location.store.info(f"{staging}/{name}")
            if info.size != by_name[name].bytes:
                raise OSError(f"{name}: {info.size} bytes, its part wrote {by_name[name].bytes}")
            files.append(by_name[name])
    dropped: list[FilterDrop] = []
    for p in parts:
        for d in p.dropped:
            if d.index < len(dropped):
                old = dropped[d.index]
                dropped[d.index] = FilterDrop(d.index, old.filter, old.dropped + d.dropped)
            else:
                dropped.append(d)
    return _commit(
        location,
        staging,
        files=files,
        total=sum(p.total for p in parts),
        kept=sum(p.kept for p in parts),
        dropped=dropped,
        filters=filters,
        manifest_extra=manifest_extra,
        parts=len(parts),
    )
