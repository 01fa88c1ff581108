"""Datasets on an S3-compatible object store (moto's server on loopback): the
same bytes as on a local disk, the manifest as the commit point, and what a
dead build leaves removed by the next build or a sweep."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from nex.collector.server.domain.scoring import MetricRegistry
from nex.collector.server.parquet import (
    FILE_NAMES,
    MANIFEST_NAME,
    DatasetExistsError,
    DatasetStore,
    Location,
    StorageConfigError,
    build_dataset,
    verify_dataset,
)
from nex.collector.server.parquet.reader import ManifestMismatch, ipc_messages, open_file
from nex.collector.server.parquet.storage import STAGING_MARK
from nex.collector.server.parquet.writer import BuildResult, commit_parts, parts_staging
from tests.support.s3 import S3Server
from tests.unit.distill_factories import synthetic_runs
from tests.unit.test_dataset_writer import EXTRA, build, failing_after

RUNS = synthetic_runs(300, seed=7)


@pytest.fixture
def store(s3: S3Server) -> DatasetStore:
    return s3.store(f"s3://{s3.new_bucket()}/team/datasets")


def names(store: DatasetStore, path: str) -> list[str]:
    return [e.name for e in store.entries(path)]


async def test_a_build_on_s3_is_byte_identical_to_one_on_disk_and_verifies(
    store: DatasetStore, tmp_path: Path
) -> None:
    where = store.location("cats", "v1")
    on_s3 = await build(RUNS, where, row_group_size=64)
    on_disk = await build(RUNS, tmp_path / "v1", row_group_size=64)
    assert on_s3.uri == where.uri and where.uri.startswith("s3://")
    assert {f.name: f.sha256 for f in on_s3.files} == {f.name: f.sha256 for f in on_disk.files}
    assert verify_dataset(where) == []
    assert names(store, where.path) == sorted([MANIFEST_NAME, *FILE_NAMES.values()])
    assert names(store, f"{store.root}/cats") == ["v1"]  # no staging left
    with store.open_input(where.child("targets.parquet")) as f:
        assert pq.ParquetFile(f).metadata.num_rows == on_s3.kept


async def test_verify_on_s3_reports_a_changed_object(store: DatasetStore) -> None:
    where = store.location("cats", "v1")
    await build(RUNS[:20], where)
    with store.fs.open_output_stream(where.child("scores.parquet")) as out:
        out.write(b"not parquet")
    with store.fs.open_output_stream(where.child("extra.bin")) as out:
        out.write(b"x")
    problems = verify_dataset(where)
    assert any(p.startswith("scores.parquet: sha256") for p in problems), problems
    assert "extra.bin: present but not listed in the manifest" in problems


async def test_a_version_on_s3_never_changes(store: DatasetStore) -> None:
    where = store.location("cats", "v1")
    await build(RUNS[:10], where)
    with pytest.raises(DatasetExistsError):
        await build(RUNS[:20], where)
    assert verify_dataset(where) == []


async def test_a_dead_build_leaves_only_staging_which_the_next_build_removes(
    store: DatasetStore,
) -> None:
    where = store.location("cats", "v1")
    with pytest.raises(ConnectionError):
        await build_failing(where)
    assert names(store, f"{store.root}/cats") == []
    # A failed build cleans up after itself; a killed one cannot: simulate its
    # leftovers, a staging prefix and files moved without a manifest.
    staging = store.make_staging(where.path)
    with store.fs.open_output_stream(f"{staging}/examples.parquet") as out:
        out.write(b"half")
    with store.fs.open_output_stream(where.child("examples.parquet")) as out:
        out.write(b"moved, no manifest")
    assert not store.committed(where.path)
    with pytest.raises(ManifestMismatch):
        open_file(where, "ds-1", "examples.parquet", "0" * 64)
    result = await build(RUNS[:30], where)
    assert result.kept == 30 and verify_dataset(where) == []
    assert names(store, f"{store.root}/cats") == ["v1"]


async def build_failing(where: Location) -> None:
    await build_dataset(
        failing_after(RUNS, 3),
        filters=[],
        metrics=MetricRegistry(),
        final_dir=where,
        manifest_extra=EXTRA,
    )


async def test_a_sweep_removes_staging_except_that_of_builds_in_progress(
    store: DatasetStore,
) -> None:
    dead = store.make_staging(store.location("cats", "v1").path)
    live = store.make_staging(store.location("dogs", "v2").path)
    for staging in (dead, live):
        with store.fs.open_output_stream(f"{staging}/examples.parquet") as out:
            out.write(b"x")
    await build(RUNS[:5], store.location("cats", "v0"))
    removed = await asyncio.to_thread(store.sweep, {("dogs", "v2")})
    assert removed == [dead]
    assert names(store, f"{store.root}/cats") == ["v0"]
    assert [n.split(STAGING_MARK)[0] for n in names(store, f"{store.root}/dogs")] == [".v2"]


async def test_rows_stream_from_s3_as_arrow_ipc(store: DatasetStore) -> None:
    import pyarrow as pa

    where = store.location("cats", "v1")
    result = await build(RUNS, where, row_group_size=64)
    entry = next(f for f in result.files if f.name == "targets.parquet")
    opened = open_file(where, "ds-1", entry.name, entry.sha256)
    try:
        messages = [m for m, _ in ipc_messages(opened, ["example_id", "y_text"], 50, 100, 4096)]
    finally:
        opened.close()
    schema = pa.ipc.read_schema(pa.py_buffer(messages[0]))
    batches = [pa.ipc.read_record_batch(pa.py_buffer(m), schema) for m in messages[1:]]
    got = pa.Table.from_batches(batches, schema)
    with store.open_input(where.child("targets.parquet")) as f:
        expected = pq.read_table(f, columns=["example_id", "y_text"]).slice(50, 100)
    assert got.equals(expected)
    assert len(batches) > 2  # row groups of 64 rows, and small messages
    assert all(
        len(m) <= 4096 or b.num_rows == 1 for m, b in zip(messages[1:], batches, strict=True)
    )


def test_bad_datasets_uris_say_what_to_write() -> None:
    for uri, words in [
        ("s3:///prefix", "name the bucket"),
        ("file://host/x", "names no host"),
        ("gs://bucket", "use file:///absolute/path or s3://bucket/prefix"),
        ("s3://b/p?endpoint=x", "no query"),
    ]:
        with pytest.raises(StorageConfigError, match=words):
            DatasetStore.from_uri(uri, env={})
    with pytest.raises(StorageConfigError, match="together"):
        DatasetStore.from_uri("s3://b", env={"AWS_ACCESS_KEY_ID": "k"})


async def _build_in_parts(where: Location, runs: list[Any], parts: int) -> BuildResult:
    """What the part jobs and the build's job do: each part written into the
    shared staging folder, at once, then the manifest."""
    staging = parts_staging(where, "ds-1")
    cut = [len(runs) * i // parts for i in range(parts + 1)]
    written = await asyncio.gather(
        *(
            build(runs[cut[i] : cut[i + 1]], where, part=i, staging=staging, row_group_size=64)
            for i in range(parts)
        )
    )
    return await asyncio.to_thread(
        commit_parts, where, staging, written, filters=[], manifest_extra=EXTRA
    )


async def test_a_build_in_parts_on_s3_matches_one_on_disk_and_verifies_every_part(
    store: DatasetStore, tmp_path: Path
) -> None:
    where = store.location("cats", "v2")
    on_s3 = await _build_in_parts(where, RUNS, 3)
    on_disk = await _build_in_parts(Location.local(tmp_path / "v2"), RUNS, 3)
    assert [(f.name, f.sha256) for f in on_s3.files] == [(f.name, f.sha256) for f in on_disk.files]
    assert [f.name for f in on_s3.files][:3] == [
        "examples/part-00000.parquet",
        "examples/part-00001.parquet",
        "examples/part-00002.parquet",
    ]
    assert on_s3.kept == len(RUNS)
    assert verify_dataset(where) == []
    assert names(store, f"{store.root}/cats") == ["v2"]  # no staging left
    manifest = json.loads(store.read_bytes(where.child(MANIFEST_NAME)))
    assert manifest["format_version"] == 2 and manifest["parts"] == 3
    with store.fs.open_output_stream(where.child("teacher/part-00002.parquet")) as out:
        out.write(b"not parquet")
    with store.fs.open_output_stream(where.child("teacher/part-00003.parquet")) as out:
        out.write(b"x")
    problems = verify_dataset(where)
    assert any(p.startswith("teacher/part-00002.parquet: ") for p in problems), problems
    assert "teacher/part-00003.parquet: present but not listed in the manifest" in problems
    assert not any("part-00001" in p for p in problems)
