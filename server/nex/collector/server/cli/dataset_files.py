"""A dataset's files as this CLI reaches them: the folder of a ``file://``
uri on this machine, and the score values read from there or through the server."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from nex.collector.client import DatasetManifest, DatasetStatus

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["fetch_scores", "local_dir", "read_scores", "scores_of"]


def local_dir(uri: str) -> Path | None:
    """The folder of a ``file://`` uri when it exists on this machine, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def read_scores(directory: Path) -> dict[str, list[float]]:
    """Finite values per score name from scores.parquet, sorted by name. Reads
    the long layout (example_id, name, value, …) and a wide one (one nullable
    numeric column per score) alike."""
    import pyarrow.parquet as pq

    parts = directory / "scores"  # a dataset built in parts: scores/part-*.parquet
    return scores_of(pq.read_table(parts if parts.is_dir() else directory / "scores.parquet"))


async def fetch_scores(client: AsyncClient, m: DatasetManifest) -> dict[str, list[float]] | None:
    """The scores of a READY dataset, read through the server (ReadDataset), so
    from any machine; None for a dataset that is not ready."""
    if m.status != DatasetStatus.READY:
        return None
    return scores_of(await client.read_dataset(m.id, file="scores", columns=["name", "value"]))


def scores_of(table: Any) -> dict[str, list[float]]:
    """Finite values per score name of a scores table (a pyarrow Table)."""
    import pyarrow as pa

    result: dict[str, list[float]] = {}
    if {"name", "value"} <= set(table.column_names):
        pairs = zip(
            table.column("name").to_pylist(), table.column("value").to_pylist(), strict=True
        )
        for name, value in pairs:
            if value is not None and math.isfinite(value):
                result.setdefault(str(name), []).append(float(value))
    else:
        for field in table.schema:
            if field.name == "example_id" or not (
                pa.types.is_floating(field.type) or pa.types.is_integer(field.type)
            ):
                continue
            values = [
                float(v)
                for v in table.column(field.name).to_pylist()
                if v is not None and math.isfinite(v)
            ]
            if values:
                result[field.name] = values
    return dict(sorted(result.items()))
