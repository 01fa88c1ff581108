"""Datasets built in parts (BuildDataset parts > 1): each part is its own job,
written at once by whichever workers take them, into
<table>/part-NNNNN.parquet; the manifest (format_version 2) lists every part,
and readers see one table per kind, equal to the same dataset built in one go."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pytest

from nex.collector.client import (
    Client,
    DatasetManifest,
    DatasetStatus,
    GenerationParams,
    InvalidArgumentError,
    connect,
)
from nex.collector.server.bootstrap import plain_dsn
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.cli import invoke, no_traceback, printed_id
from tests.support.collector import TOKEN, collector_settings
from tests.support.db import execute, fetch_all
from tests.support.processes import WorkerProcess

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


def test_a_part_whose_worker_died_is_built_by_another_worker(
    own_backing: Backing, teacher_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    """The jobs are run here, as two workers would run them: worker A writes
    part 0; part 1's worker died mid-write (its lease ran out, a torn file in
    staging); the build's job, run again as the reconciler would, restarts
    part 1, which worker B writes; the last part hands back to the build's job,
    which writes the manifest."""
    settings = collector_settings(own_backing, tmp_path / "data", **teacher_settings(teacher_api))
    with CollectorEnvironment(settings) as running, connect(running.address, token=TOKEN) as c:
        template = c.create_template(unique("pt"), user_template="On {{ t }}.", variables=["t"])
        batch = c.create_batch(unique("pt"), template.id, "mock", "mock-1")
        c.create_runs(batch.id, [{"t": str(i)} for i in range(10)])
        for _ in c.watch_batch(batch.id):
            pass
    with (
        CollectorEnvironment(settings, work=False) as running,
        connect(running.address, token=TOKEN) as c,
    ):
        datasets = running.container.datasets
        built = c.build_dataset(unique("pt"), "v1", [batch.id], parts=2)
        assert running.call(datasets.run_build(built.id)).startswith("building: 0 of 2")
        assert running.call(datasets.run_part(f"{built.id}:part:0", "worker-a")).startswith(
            "part 0 written"
        )
        # Part 1's worker took it and died: its lease ran out, its file is torn.
        execute(
            running,
            "UPDATE dataset_parts SET worker_id = 'dead', lease_expires = now() - interval '1s'"
            " WHERE dataset_id = $1 AND part = 1",
            built.id,
        )
        final = _folder(built)
        torn = final.parent / f".{final.name}.tmp-{built.id}" / "targets" / "part-00001.parquet"
        torn.parent.mkdir(parents=True, exist_ok=True)
        torn.write_bytes(b"PAR1 torn")
        assert c.get_dataset(built.id).status == DatasetStatus.BUILDING
        # No part renewed the build's lease: the reconciler runs the build's job again.
        execute(
            running,
            "UPDATE datasets SET lease_expires = now() - interval '1s' WHERE id = $1",
            built.id,
        )
        assert running.call(datasets.run_build(built.id)).startswith("building: 1 of 2")
        assert running.call(datasets.run_part(f"{built.id}:part:1", "worker-b")).startswith(
            "part 1 written"
        )
        assert running.call(datasets.run_build(built.id)).startswith("ready: 10 of 10")
        ready = c.get_dataset(built.id)
        assert ready.status == DatasetStatus.READY and ready.parts == 2
        assert c.verify_dataset(ready.id).ok
        assert c.read_dataset(ready.id, file="targets").num_rows == 10
        writers = fetch_all(
            running,
            "SELECT worker_id FROM dataset_parts WHERE dataset_id = $1 ORDER BY part",
            built.id,
        )
        assert [w["worker_id"] for w in writers] == ["worker-a", "worker-b"]
        assert not torn.parent.parent.exists()  # the staging folder became the dataset


def test_the_cli_builds_shows_and_verifies_a_dataset_in_parts(
    collector: CollectorEnvironment, batch_id: str, tmp_path: Path
) -> None:
    built = invoke(
        collector,
        "dataset", "build", "--name", unique("pt-cli"), "--version", "v1", "--batch", batch_id,
        "--parts", "2", "--score", "length_chars",
    )  # fmt: skip
    no_traceback(built)
    assert built.exit_code == 0, built.output
    assert "examples/part-00001.parquet" in built.output and "length_chars" in built.output
    dataset_id = printed_id(built, "ds")
    verified = invoke(collector, "dataset", "verify", dataset_id)
    assert verified.exit_code == 0 and "every file matches manifest.json" in verified.output
    folder = invoke(None, "dataset", "verify", str(_folder(_manifest(collector, dataset_id))))
    assert folder.exit_code == 0, folder.output


def _manifest(collector: CollectorEnvironment, dataset_id: str) -> DatasetManifest:
    with connect(collector.address, token=collector.token) as c:
        return c.get_dataset(dataset_id)


def test_two_worker_processes_write_the_parts_of_one_build(
    own_backing: Backing, teacher_api: FakeTeacherAPI, tmp_path: Path
) -> None:
    """A worker process writes one part at a time, so while one part holds a
    worker (held here: its part cannot record itself done while this test
    holds the dataset's row), the other part can only be written by the other
    worker process."""
    settings = collector_settings(own_backing, tmp_path / "data", **teacher_settings(teacher_api))
    env = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": own_backing.redis_url,
        "DATA_DIR": str(tmp_path / "data"),
        "RECONCILE_INTERVAL_S": "1",
        **{k: str(v) for k, v in teacher_settings(teacher_api).items()},
    }
    with CollectorEnvironment(settings, work=False) as running, contextlib.ExitStack() as stack:
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = [WorkerProcess(env, log).start() for log in logs]
        for w in workers:
            stack.callback(w.stop)
        _until("the workers to start", lambda: all(b"ready" in log.read_bytes() for log in logs))
        with connect(running.address, token=TOKEN) as c:
            template = c.create_template(unique("pt"), user_template="On {{ t }}.", variables=["t"])
            batch = c.create_batch(unique("pt"), template.id, "mock", "mock-1")
            c.create_runs(batch.id, [{"t": str(i)} for i in range(12)])
            for _ in c.watch_batch(batch.id):
                pass
            for w in workers:  # nothing moves until this test holds the dataset's row
                assert w.proc is not None
                w.proc.send_signal(signal.SIGSTOP)
            try:
                built = c.build_dataset(unique("pt"), "v1", [batch.id], parts=2)
                dsn = plain_dsn(running.container.database_url)
                holder = running.call(_hold_row(dsn, built.id))
            finally:
                for w in workers:
                    assert w.proc is not None
                    w.proc.send_signal(signal.SIGCONT)
            try:
                query = (
                    "SELECT worker_id FROM dataset_parts"
                    " WHERE dataset_id = $1 AND worker_id IS NOT NULL"
                )
                _until(
                    "both parts to be taken",
                    lambda: len(fetch_all(running, query, built.id)) == 2,
                )
                writers = {r["worker_id"] for r in fetch_all(running, query, built.id)}
            finally:
                running.call(_release(holder))
            assert len(writers) == 2
            ready = c.wait_dataset(built.id, timeout=60)
            assert ready.status == DatasetStatus.READY, ready.error
            assert c.verify_dataset(ready.id).ok and ready.counts.kept == 12


async def _hold_row(dsn: str, dataset_id: str) -> Any:
    """A transaction holding the dataset's row FOR KEY SHARE: builds proceed,
    but a part cannot record itself done (that takes the row FOR UPDATE)."""
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1 FROM datasets WHERE id = $1 FOR KEY SHARE", dataset_id)
    return conn, tx


async def _release(holder: Any) -> None:
    conn, tx = holder
    await tx.rollback()
    await conn.close()


def _until(what: str, check: Callable[[], bool], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
