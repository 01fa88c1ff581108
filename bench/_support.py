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
from typing import Any, cast

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
    options, e.g. --rpm, --answer-tokens); yields its base URL."""
    with fake_teacher_process(latency_ms, log, *extra) as (base_url, _pid):
        yield base_url


@contextlib.contextmanager
def fake_teacher_process(latency_ms: float, log: Path, *extra: str) -> Iterator[tuple[str, int]]:
    """As fake_teacher; yields its base URL and its pid."""
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
    with process(args, {}, log) as proc:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", proc.pid


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


# -- CPU of process trees -------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, the live
    ones and those already reaped (their times roll up into children_*), so
    that a difference of two readings counts backends and sandboxes that came
    and went in between."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in members:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return float(total)


def self_cpu_s() -> float:
    """User + system CPU seconds of this process alone (not its children)."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent not idle (every session on it)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


async def postgres_root_pid(database_url: str) -> int | None:
    """The postmaster's pid (the parent of a backend), None when it is not a
    process this machine's /proc shows (e.g. in a container)."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:  # asked while the backend lives
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            parent = psutil.Process(backend).parent()
        except psutil.Error:
            return None
    finally:
        await conn.close()
    return None if parent is None else int(parent.pid)


def redis_root_pid(redis_url: str) -> int | None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        # redis types every reply Awaitable | Any (its sync and asyncio clients share them).
        info = cast("dict[str, Any]", client.info("server"))
        pid = int(info["process_id"])
    finally:
        client.close()
    return pid if psutil.pid_exists(pid) else None
