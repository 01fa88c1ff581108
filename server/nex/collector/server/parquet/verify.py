"""Checks a dataset (a local folder or a prefix in an object store) against its
manifest.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from nex.collector.server.parquet.schema import (
    FILE_NAMES,
    FORMAT_VERSION,
    PARTS_FORMAT_VERSION,
    SCHEMAS,
)
from nex.collector.server.parquet.storage import MANIFEST_NAME, Location

__all__ = ["sha256_of", "verify_dataset"]


def sha256_of(location: Location, name: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with location.store.fs.open_input_stream(location.child(name)) as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def verify_dataset(directory: Path | Location) -> list[str]:
    """Recomputes every file's sha256, size and row count and compares them
    with manifest.json; also checks each table's schema. Returns the problems
    found, one sentence each; an empty list means the dataset is intact.
    Blocking: reads every byte of the dataset.

    The files are checked against the layout of the manifest's
    ``format_version`` (see docs/dataset-format.md): 1, one file per table;
    2, ``<table>/part-NNNNN.parquet`` for parts 0..parts-1 of every table."""
    location = directory if isinstance(directory, Location) else Location.local(directory)
    store = location.store
    shown = directory if isinstance(directory, Path) else location.uri
    try:
        manifest = json.loads(store.read_bytes(location.child(MANIFEST_NAME)).decode("utf-8"))
    except FileNotFoundError:
        return [f"{MANIFEST_NAME} is missing in {shown}"]
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST_NAME} is unreadable: {exc}"]
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        return [f"{MANIFEST_NAME} has no list of files"]

    version = manifest.get("format_version")
    if version not in (FORMAT_VERSION, PARTS_FORMAT_VERSION):
        return [
            f"{MANIFEST_NAME} has format_version {version!r}; this server reads "
            f"{FORMAT_VERSION} and {PARTS_FORMAT_VERSION}"
        ]
    depth = 1 if version == FORMAT_VERSION else 2
    problems: list[str] = []
    listed: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{MANIFEST_NAME} has a malformed file entry: {entry!r}")
            continue
        name = entry["name"]
        listed.add(name)
        parts_of_name = PurePosixPath(name).parts
        if (
            len(parts_of_name) != depth
            or "/".join(parts_of_name) != name
            or any(p in ("", ".", "..") for p in parts_of_name)
        ):
            problems.append(
                f"{name}: file names must not contain a path"
                if depth == 1
                else f"{name}: format_version 2 names files <table>/part-NNNNN.parquet"
            )
            continue
        path = location.child(name)
        if not store.is_file(path):
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        size = store.info(path).size
        if size != entry.get("bytes"):
            problems.append(f"{name}: {size} bytes, manifest says {entry.get('bytes')}")
        digest = sha256_of(location, name)
        if digest != entry.get("sha256"):
            problems.append(f"{name}: sha256 {digest}, manifest says {entry.get('sha256')}")
        try:
            with store.open_input(path) as f:
                parquet = pq.ParquetFile(f)
                rows = parquet.metadata.num_rows
                schema = parquet.schema_arrow
        except Exception as exc:
            problems.append(f"{name}: not a readable Parquet file ({exc})")
            continue
        if rows != entry.get("rows"):
            problems.append(f"{name}: {rows} rows, manifest says {entry.get('rows')}")
        table = name.split("/")[0].removesuffix(".parquet")
        expected = SCHEMAS.get(table)
        if expected is not None and not schema.equals(expected):
            problems.append(f"{name}: schema differs from the {table} table's")

    if version == FORMAT_VERSION:
        expected_names = set(FILE_NAMES.values())
    else:
        parts = manifest.get("parts")
        if not isinstance(parts, int) or parts < 1:
            problems.append(f"{MANIFEST_NAME} has no number of parts (format_version 2)")
            parts = 0
        expected_names = {
            f"{table}/part-{i:05d}.parquet" for table in SCHEMAS for i in range(parts)
        }
    for name in sorted(expected_names - listed):
        problems.append(f"{name}: not listed in the manifest")
    for present in _present(location, depth):
        if present != MANIFEST_NAME and present not in listed:
            problems.append(f"{present}: present but not listed in the manifest")
    return problems


def _present(location: Location, depth: int) -> list[str]:
    """The names of the files in the dataset's folder, down to `depth` levels
    (a folder where a file belongs is reported as such)."""
    names: list[str] = []
    for entry in location.store.entries(location.path):
        if entry.is_file or depth == 1:
            names.append(entry.name)
            continue
        for child in location.store.entries(entry.path):
            names.append(f"{entry.name}/{child.name}")
    return names
