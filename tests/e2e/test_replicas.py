"""Many replicas on one PostgreSQL, one Redis and one bucket: two server
processes and three worker processes, datasets on an S3-compatible server.
A batch created on server A and watched on B sees every event; a dataset built
by any worker reads the same through either server; killing A loses nothing,
and a watcher that was on A resumes on B."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from nex.collector.client import Client, GenerationParams, RunEvent, RunStatus, connect
from nex.collector.server.bootstrap import migrate_database
from nex.collector.server.config import load_settings
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import TOKEN
from tests.support.processes import WorkerProcess, free_port
from tests.support.s3 import S3Server

WORKERS = 3


@dataclass
class Server:
    address: str
    proc: subprocess.Popen[bytes]

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _serve(env: dict[str, str], log: Path, *extra: str) -> Server:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nex.collector.server.cli", "serve", *extra],
            env={**os.environ, **env, "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(f"127.0.0.1:{port}", proc)


def _wait_for(logs: list[Path], word: bytes, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 120
    while not all(log.exists() and word in log.read_bytes() for log in logs):
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.1)


@dataclass
class Topology:
    a: Server
    b: Server
    workers: list[WorkerProcess]
    env: dict[str, str]


@pytest.fixture
def topology(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, s3: S3Server, tmp_path: Path
) -> Iterator[Topology]:
    env = {
        "DATABASE_URL": own_backing.database_url,
        "REDIS_URL": own_backing.redis_url,
        "DATA_DIR": str(tmp_path / "data"),
        "DATASETS_URI": f"s3://{s3.new_bucket()}/datasets",
        "NEX_COLLECTOR_TOKENS": TOKEN,
        "RECONCILE_INTERVAL_S": "0.5",
        "WATCH_HEARTBEAT_S": "1",
        "LOG_LEVEL": "INFO",
        "WORKER_MAX_JOBS": "4",  # so that every worker gets runs
        **s3.env,
        **{k: str(v) for k, v in teacher_settings(fresh_teacher_api).items()},
    }
    asyncio.run(migrate_database(load_settings(**env)))  # then all five start at once
    a = _serve(env, tmp_path / "a.log")
    b = _serve(env, tmp_path / "b.log")
    logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
    workers = [WorkerProcess(env, log).start() for log in logs]
    try:
        _wait_for(
            [tmp_path / "a.log", tmp_path / "b.log", *logs],
            b"ready",
            [a.proc, b.proc, *(w.proc for w in workers if w.proc is not None)],
        )
        yield Topology(a, b, workers, env)
    finally:
        for w in workers:
            w.stop()
        for server in (a, b):
            if server.proc.poll() is None:
                server.proc.terminate()
                server.proc.wait(20)


def _collect(client: Client, events: list[RunEvent], batch_id: str) -> threading.Thread:
    def watch() -> None:
        events.extend(client.watch_batch(batch_id))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


async def _workers_of(database_url: str, batch_id: str) -> set[str]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql", 1))
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT worker_id FROM runs WHERE batch_id = $1 AND worker_id IS NOT NULL",
            batch_id,
        )
    finally:
        await conn.close()
    return {r[0] for r in rows}


def test_two_servers_three_workers_one_bucket(
    topology: Topology, fresh_teacher_api: FakeTeacherAPI
) -> None:
    t = topology
    fresh_teacher_api.latency_s = 0.05
    # A channel to A first, B next: when A dies, its calls and watches go to B.
    both = f"ipv4:{t.a.address},{t.b.address}"
    with (
        connect(t.a.address, token=TOKEN) as on_a,
        connect(t.b.address, token=TOKEN) as on_b,
        connect(both, token=TOKEN) as failover,
    ):
        template = on_a.create_template(
            unique("rep"), user_template="About {{ x }}.", variables=["x"]
        )
        batch = on_a.create_batch(
            unique("rep"), template.id, "mock", "mock-1", params=GenerationParams(top_logprobs=2)
        )
        runs = on_a.create_runs(batch.id, [{"x": str(i)} for i in range(60)])
        seen_b: list[RunEvent] = []
        seen_failover: list[RunEvent] = []
        watchers = [
            _collect(on_b, seen_b, batch.id),
            _collect(failover, seen_failover, batch.id),
        ]
        deadline = time.monotonic() + 60
        while not seen_failover:  # the fail-over watch is live, on A
            assert time.monotonic() < deadline
            time.sleep(0.02)
        t.a.kill9()
        for w in watchers:
            w.join(120)
            assert not w.is_alive()
        ids = {r.id for r in runs}
        for seen in (seen_b, seen_failover):
            revisions = [e.revision for e in seen]
            assert revisions == sorted(set(revisions))  # in order, none twice
            done = Counter(e.run_id for e in seen if e.status == RunStatus.COMPLETED)
            assert done == dict.fromkeys(ids, 1)
        assert [e.revision for e in seen_b] == [e.revision for e in seen_failover]
        workers = asyncio.run(_workers_of(t.env["DATABASE_URL"], batch.id))
        assert len(workers) == WORKERS, workers  # every worker ran some of them

        # A is gone: build through the fail-over channel (now B), read through B.
        ready = failover.wait_dataset(
            failover.build_dataset(unique("rep"), "v1", [batch.id]).id, timeout=60
        )
        assert ready.uri.startswith("s3://") and ready.counts.kept == len(ids)
        table = on_b.read_dataset(ready.id, file="targets", columns=["example_id"])
        assert set(table.column("example_id").to_pylist()) == ids
        assert on_b.verify_dataset(ready.id).ok
    # Server A again, as a new process: the same dataset reads the same through it.
    log = Path(t.env["DATA_DIR"]).parent / "a-again.log"
    again = _serve(t.env, log)
    try:
        _wait_for([log], b"ready", [again.proc])
        with (
            connect(again.address, token=TOKEN) as on_a_again,
            connect(t.b.address, token=TOKEN) as on_b,
        ):
            assert on_a_again.read_dataset(ready.id, file="targets").equals(
                on_b.read_dataset(ready.id, file="targets")
            )
    finally:
        again.proc.terminate()
        again.proc.wait(20)
