"""What the benchmarks share: backing services, processes, a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def backing() -> Iterator[tuple[str, str]]:
    """DATABASE_URL/REDIS_URL when set (a fresh database on that server), else an
    embedded PostgreSQL + Redis in a temporary folder."""
    sys.path.insert(0, str(ROOT))
    from tests.support.backing import backing_services

    with tempfile.TemporaryDirectory(prefix="nexc-bench-") as tmp, backing_services(Path(tmp)) as b:
        yield b.database_url, b.redis_url


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def fake_teacher(latency_ms: float, log: Path, *extra: str) -> Iterator[str]:
    """The fake OpenAI/Anthropic server in its own process (`extra`: more of its
    options, e.g. --rpm); yields its base URL."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "tests.fakes.teacher_api",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        *extra,
    ]
    with process(args, {}, log):
        wait_port(port)
        yield f"http://127.0.0.1:{port}"


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a live process, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(psutil.Process(pid).memory_info().rss) / 2**20
