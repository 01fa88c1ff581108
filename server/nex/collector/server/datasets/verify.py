"""Checks a dataset folder against its manifest.json."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from nex.collector.server.datasets.schema import FILE_NAMES, SCHEMAS
from nex.collector.server.datasets.writer import MANIFEST_NAME, sha256_file

__all__ = ["verify_dataset"]


def verify_dataset(directory: Path) -> list[str]:
    """Recomputes every file's sha256, size and row count and compares them
    with manifest.json; also checks each table's schema. Returns the problems
    found, one sentence each; an empty list means the dataset is intact."""
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{MANIFEST_NAME} is missing in {directory}"]
    except (OSError, ValueError) as exc:
        return [f"{MANIFEST_NAME} is unreadable: {exc}"]
    entries = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        return [f"{MANIFEST_NAME} has no list of files"]

    problems: list[str] = []
    listed: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{MANIFEST_NAME} has a malformed file entry: {entry!r}")
            continue
        name = entry["name"]
        listed.add(name)
        path = directory / name
        if Path(name).name != name:
            problems.append(f"{name}: file names must not contain a path")
            continue
        if not path.is_file():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        size = path.stat().st_size
        if size != entry.get("bytes"):
            problems.append(f"{name}: {size} bytes, manifest says {entry.get('bytes')}")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            problems.append(f"{name}: sha256 {digest}, manifest says {entry.get('sha256')}")
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            problems.append(f"{name}: not a readable Parquet file ({exc})")
            continue
        rows = parquet.metadata.num_rows
        if rows != entry.get("rows"):
            problems.append(f"{name}: {rows} rows, manifest says {entry.get('rows')}")
        table = name.removesuffix(".parquet")
        expected = SCHEMAS.get(table)
        if expected is not None and not parquet.schema_arrow.equals(expected):
            problems.append(f"{name}: schema differs from the {table} table's")

    for name in sorted(set(FILE_NAMES.values()) - listed):
        problems.append(f"{name}: not listed in the manifest")
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST_NAME and path.name not in listed:
            problems.append(f"{path.name}: present but not listed in the manifest")
    return problems
