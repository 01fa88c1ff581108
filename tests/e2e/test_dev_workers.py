"""`nex-collector dev` as a developer runs it: the server and worker processes
beside it, so both cores work. A worker that dies is started again, and
stopping dev stops every worker it started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from nex.collector.client import BatchStatus, Client
from tests.support.backing import Backing
from tests.support.processes import free_port, process_env

TOKEN = "dev-token"
Dev = tuple[subprocess.Popen[bytes], str, Path]  # the dev process, its address, its log


def _workers(dev: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The dev process's live `worker` children (one may vanish while we look)."""
    found = []
    for p in psutil.Process(dev.pid).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "worker" in p.cmdline():
                found.append(p)
        except psutil.Error:
            continue
    return found


def _until(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def dev(own_backing: Backing, tmp_path: Path) -> Iterator[Dev]:
    port = free_port()
    log = tmp_path / "dev.log"
    env = process_env(
        own_backing,
        tmp_path / "data",
        NEX_COLLECTOR_TOKENS=TOKEN,
        METRICS_ADDR=f"127.0.0.1:{free_port()}",  # the server's; never a worker's
        COLUMNS="300",
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nex.collector.server.cli", "dev", "--workers", "2"],
            env=env | {"NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _until("dev to be ready", lambda: "2 worker processes" in log.read_text())
        yield proc, f"127.0.0.1:{port}", log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _collect(address: str, n: int) -> str:
    with Client.connect(address, token=TOKEN) as client:
        template = client.create_template(
            f"dev-{time.time_ns()}", user_template="About {{ t }}.", variables=["t"]
        )
        batch = client.create_batch("dev", template.id, "mock", "mock-1")
        client.create_runs(batch.id, [{"t": str(i)} for i in range(n)])
        return batch.id


def test_dev_runs_workers_beside_the_server_and_restarts_one_that_dies(
    dev: Dev,
) -> None:
    proc, address, log = dev
    _until("two worker processes", lambda: len(_workers(proc)) == 2)
    victim = _workers(proc)[0]
    victim.kill()
    _until(
        "the dead worker to be replaced",
        lambda: len(_workers(proc)) == 2 and victim.pid not in {w.pid for w in _workers(proc)},
    )
    assert "exited with code -9; starting it again" in log.read_text()

    batch_id = _collect(address, 20)
    with Client.connect(address, token=TOKEN) as client:
        _until(
            "the batch to complete",
            lambda: client.get_batch(batch_id).status == BatchStatus.COMPLETED,
        )
        assert client.get_batch(batch_id).counts.completed == 20

    workers = _workers(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    for w in workers:
        with contextlib.suppress(psutil.Error):
            assert w.status() == psutil.STATUS_ZOMBIE, f"worker {w.pid} outlived dev"
    assert "Traceback" not in log.read_text()
