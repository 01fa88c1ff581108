"""Datasets built in parts (BuildDataset parts > 1): each part is its own job,
written at once by whichever workers take them, into
<table>/part-NNNNN.parquet; the manifest (format_version 2) lists every part,
and readers see one table per kind, equal to the same dataset built in one go."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

from nex.collector.client import (
    Client,
    DatasetManifest,
    DatasetStatus,
    GenerationParams,
    InvalidArgumentError,
)
from tests.conftest import unique

TABLES = ("examples", "inputs", "teacher", "targets", "scores")


def _folder(manifest: DatasetManifest) -> Path:
    return Path(urlparse(manifest.uri).path)


@pytest.fixture(scope="module")
def batch_id(client: Client) -> str:
    template = client.create_template(
        unique("pt"), user_template="Tell me about {{ topic }}.", variables=["topic"]
    )
    batch = client.create_batch(
        unique("pt"),
        template.id,
        "mock",
        "mock-1",
        params=GenerationParams(top_logprobs=3, max_tokens=24),
    )
    client.create_runs(batch.id, [{"topic": f"topic {i}"} for i in range(20)])
    for _ in client.watch_batch(batch.id):
        pass
    return batch.id


def _build(client: Client, batch_id: str, parts: int) -> DatasetManifest:
    started = client.build_dataset(unique("pt"), "v1", [batch_id], parts=parts)
    assert started.parts == max(1, parts)
    done = client.wait_dataset(started.id, timeout=60)
    assert done.status == DatasetStatus.READY, done.error
    return done


@pytest.fixture(scope="module")
def whole(client: Client, batch_id: str) -> DatasetManifest:
    return _build(client, batch_id, 1)


@pytest.fixture(scope="module")
def in_parts(client: Client, batch_id: str) -> DatasetManifest:
    return _build(client, batch_id, 3)


def test_one_part_keeps_the_single_file_layout(whole: DatasetManifest) -> None:
    assert sorted(f.name for f in whole.files) == sorted(f"{t}.parquet" for t in TABLES)
    manifest = json.loads((_folder(whole) / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and "parts" not in manifest


def test_the_manifest_lists_every_part(in_parts: DatasetManifest) -> None:
    expected = [f"{t}/part-{i:05d}.parquet" for t in TABLES for i in range(3)]
    assert [f.name for f in in_parts.files] == expected
    manifest = json.loads((_folder(in_parts) / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["parts"] == 3
    assert [f["name"] for f in manifest["files"]] == expected
    for f in manifest["files"]:
        path = _folder(in_parts) / f["name"]
        assert path.stat().st_size == f["bytes"] and len(f["sha256"]) == 64
    examples = [f for f in in_parts.files if f.name.startswith("examples/")]
    assert sum(f.rows for f in examples) == in_parts.counts.kept == 20
    assert all(f.rows > 0 for f in examples)  # the runs are split across the parts


def test_parts_read_back_as_the_dataset_built_in_one_go(
    client: Client, whole: DatasetManifest, in_parts: DatasetManifest
) -> None:
    assert in_parts.counts == whole.counts
    for table in TABLES:
        one = client.read_dataset(whole.id, file=table)
        parts = client.read_dataset(in_parts.id, file=f"{table}.parquet")
        assert parts.equals(one), table
    # Row ranges and columns count across the parts.
    one = client.read_dataset(whole.id, file="targets", columns=["example_id"], offset=5, limit=9)
    got = client.read_dataset(
        in_parts.id, file="targets", columns=["example_id"], offset=5, limit=9
    )
    assert got.equals(one) and got.num_rows == 9
    single = client.read_dataset(in_parts.id, file="examples/part-00001.parquet")
    assert 0 < single.num_rows < 20


def test_a_rebuild_with_the_same_parts_is_byte_identical(
    client: Client, batch_id: str, in_parts: DatasetManifest
) -> None:
    again = _build(client, batch_id, 3)
    assert [(f.name, f.sha256, f.bytes) for f in again.files] == [
        (f.name, f.sha256, f.bytes) for f in in_parts.files
    ]
    for f in again.files:
        assert (_folder(again) / f.name).read_bytes() == (_folder(in_parts) / f.name).read_bytes()


def test_verify_checks_every_part(client: Client, batch_id: str) -> None:
    built = _build(client, batch_id, 2)
    assert client.verify_dataset(built.id).ok
    path = _folder(built) / "targets" / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    found = client.verify_dataset(built.id)
    assert not found.ok
    assert any(p.startswith("targets/part-00001.parquet: sha256") for p in found.problems), (
        found.problems
    )
    assert not any("part-00000" in p for p in found.problems)


def test_parts_out_of_range_are_refused(client: Client, batch_id: str) -> None:
    for parts in (-1, 65):
        with pytest.raises(InvalidArgumentError) as caught:
            client.build_dataset(unique("pt"), "v1", [batch_id], parts=parts)
        assert {v.field for v in caught.value.field_violations} == {"parts"}
