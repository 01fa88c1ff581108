"""ReadDataset and VerifyDataset through the shipped client: rows come as Arrow
record batches from wherever the dataset is stored (the local disk of the
session's collector, or an S3-compatible server), equal to a direct pyarrow
read of the same file, with bad requests refused naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nex.collector.client import (
    AsyncClient,
    Client,
    DatasetManifest,
    DatasetStatus,
    FailedPreconditionError,
    GenerationParams,
    InvalidArgumentError,
    LengthFilter,
    NotFoundError,
    connect,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.s3 import S3Server

FILES = ("examples", "inputs", "teacher", "targets", "scores")


def _dataset(client: Client, n: int = 12) -> DatasetManifest:
    template = client.create_template(
        unique("rd"), user_template="Tell me about {{ topic }}.", variables=["topic"]
    )
    batch = client.create_batch(
        unique("rd"),
        template.id,
        "mock",
        "mock-1",
        params=GenerationParams(top_logprobs=3, max_tokens=24),
    )
    client.create_runs(batch.id, [{"topic": f"topic {i}"} for i in range(n)])
    for _ in client.watch_batch(batch.id):
        pass
    return client.wait_dataset(client.build_dataset(unique("rd"), "v1", [batch.id]).id, timeout=60)


@pytest.fixture(scope="module")
def ready(client: Client) -> DatasetManifest:
    return _dataset(client)


def _local(manifest: DatasetManifest, file: str) -> pa.Table:
    return pq.read_table(Path(urlparse(manifest.uri).path) / f"{file}.parquet")


def test_every_file_reads_back_equal_to_a_direct_read(
    client: Client, ready: DatasetManifest
) -> None:
    for file in FILES:
        got = client.read_dataset(ready.id, file=f"{file}.parquet")
        assert got.equals(_local(ready, file)), file


def test_columns_and_row_ranges(client: Client, ready: DatasetManifest) -> None:
    direct = _local(ready, "targets")
    got = client.read_dataset(
        ready.id, file="targets", columns=["y_text", "example_id"], offset=3, limit=5
    )
    assert got.column_names == ["y_text", "example_id"]
    assert got.equals(direct.select(["y_text", "example_id"]).slice(3, 5))
    tail = client.read_dataset(ready.id, file="targets", columns=["example_id"], offset=10)
    assert tail.column("example_id").to_pylist() == direct.column("example_id").to_pylist()[10:]
    end = client.read_dataset(ready.id, file="scores", offset=_local(ready, "scores").num_rows)
    assert end.num_rows == 0 and end.schema.equals(_local(ready, "scores").schema)
    batches = list(client.iter_dataset_batches(ready.id, file="teacher", columns=["tokens"]))
    assert sum(b.num_rows for b in batches) == ready.counts.kept
    assert all(isinstance(b, pa.RecordBatch) for b in batches)


async def test_the_async_client_reads_the_same(
    collector: CollectorEnvironment, ready: DatasetManifest
) -> None:
    async with AsyncClient.connect(collector.address, token=collector.token) as c:
        table = await c.read_dataset(ready.id, file="inputs")
        rows = 0
        async for batch in c.iter_dataset_batches(ready.id, file="inputs", limit=7):
            rows += batch.num_rows
    assert table.equals(_local(ready, "inputs")) and rows == 7


class _ReadArgs(TypedDict, total=False):
    file: str
    columns: list[str]
    offset: int
    limit: int


def test_bad_reads_name_the_field(client: Client, ready: DatasetManifest) -> None:
    cases: list[tuple[_ReadArgs, str]] = [
        ({"file": "secrets.parquet"}, "file"),
        ({"file": ""}, "file"),
        ({"file": "targets", "columns": ["y_text", "nope"]}, "columns[1]"),
        ({"file": "targets", "columns": ["y_text", "y_text"]}, "columns[1]"),
        ({"file": "targets", "offset": -1}, "offset"),
        ({"file": "targets", "limit": -2}, "limit"),
        ({"file": "targets", "offset": ready.counts.kept + 1}, "offset"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidArgumentError) as caught:
            client.read_dataset(ready.id, **kwargs)
        assert field in {v.field for v in caught.value.field_violations}, kwargs
    with pytest.raises(InvalidArgumentError) as caught:
        client.read_dataset("not an id", file="targets")
    assert {v.field for v in caught.value.field_violations} == {"dataset_id"}
    with pytest.raises(NotFoundError):
        client.read_dataset("ds_doesnotexist0000000000", file="targets")


def test_a_dataset_that_is_not_ready_cannot_be_read(client: Client, ready: DatasetManifest) -> None:
    failed = client.wait_dataset(
        client.build_dataset(
            unique("rd"), "v1", ready.batch_ids, filters=[LengthFilter(min_chars=10**6)]
        ).id,
        timeout=60,
        raise_on_failure=False,
    )
    assert failed.status == DatasetStatus.FAILED
    with pytest.raises(FailedPreconditionError) as caught:
        client.read_dataset(failed.id, file="targets")
    assert caught.value.reason == "DATASET_NOT_READY"
    with pytest.raises(FailedPreconditionError):
        client.verify_dataset(failed.id)


def test_verify_through_the_server_finds_a_changed_file(
    client: Client, ready: DatasetManifest
) -> None:
    assert client.verify_dataset(ready.id).ok
    other = _dataset(client, n=3)
    path = Path(urlparse(other.uri).path) / "scores.parquet"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    found = client.verify_dataset(other.id)
    assert not found.ok and found.dataset.id == other.id
    assert any(p.startswith("scores.parquet: sha256") for p in found.problems), found.problems
    with pytest.raises(FailedPreconditionError) as caught:
        client.read_dataset(other.id, file="scores")  # the size still matches: rows read…
    assert caught.value.reason == "DATASET_FILES_MISMATCH"


@pytest.fixture
def s3_collector(
    own_backing: Backing, teacher_api: FakeTeacherAPI, s3: S3Server, tmp_path: Path
) -> Iterator[tuple[CollectorEnvironment, str]]:
    bucket = s3.new_bucket()
    settings = collector_settings(
        own_backing,
        tmp_path / "data",
        DATASETS_URI=f"s3://{bucket}/nex/datasets",
        **s3.env,
        **teacher_settings(teacher_api),
    )
    with CollectorEnvironment(settings) as running:
        yield running, bucket


def test_a_dataset_on_s3_is_built_read_and_verified_through_the_server(
    s3_collector: tuple[CollectorEnvironment, str], s3: S3Server
) -> None:
    collector, bucket = s3_collector
    with connect(collector.address, token=collector.token) as client:
        ready = _dataset(client, n=6)
        assert ready.uri == f"s3://{bucket}/nex/datasets/{ready.name}/v1"
        assert not (collector.settings.data_dir / "datasets").exists()  # nothing on disk
        store = s3.store(f"s3://{bucket}/nex/datasets")
        for file in FILES:
            with store.open_input(f"{bucket}/nex/datasets/{ready.name}/v1/{file}.parquet") as f:
                direct = pq.read_table(f)
            assert client.read_dataset(ready.id, file=file).equals(direct), file
        assert client.verify_dataset(ready.id).ok
        again = client.wait_dataset(
            client.build_dataset(unique("rd"), "v1", ready.batch_ids).id, timeout=60
        )
        assert {f.name: f.sha256 for f in again.files} == {f.name: f.sha256 for f in ready.files}
