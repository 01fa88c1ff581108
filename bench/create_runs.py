"""BatchCreateRuns latency: N runs in one call (rendered, stored, queued) through
a real server, no worker (the runs stay queued). In the same run, the baseline:
the same renders done in this process with a plain Jinja environment, so the
figure shows what a call costs beyond the bare rendering.

    python bench/create_runs.py [--runs 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, free_port, process, wait_port  # noqa: E402

SYSTEM = "You are a careful writer. Answer in {{ style }}."
USER = "Write {{ n }} sentences about {{ topic }}.{% for i in range(3) %} ({{ i }}){% endfor %}"


def inputs(n: int) -> list[dict[str, str]]:
    return [{"topic": f"subject {i}", "style": "plain English", "n": str(i % 5)} for i in range(n)]


def bare_render(runs: list[dict[str, str]]) -> float:
    """Seconds to render every run with a plain (unsandboxed) Jinja environment."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    system, user = env.from_string(SYSTEM), env.from_string(USER)
    started = time.perf_counter()
    for variables in runs:
        system.render(variables)
        user.render(variables)
    return time.perf_counter() - started


async def through_collector(address: str, runs: list[dict[str, str]], repeats: int) -> list[float]:
    from nex.collector.client import AsyncClient

    async with AsyncClient.connect(address, token="bench", timeout=300) as client:
        template = await client.create_template(
            f"bench-{time.time_ns()}",
            system_template=SYSTEM,
            user_template=USER,
            variables=["style", "topic", "n"],
        )
        batch = await client.create_batch("bench", template.id, "mock", "mock-1")
        await client.create_runs(batch.id, runs[:10])  # warm up
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            created = await client.create_runs(batch.id, runs)
            seconds.append(time.perf_counter() - started)
            assert len(created) == len(runs)
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = inputs(args.runs)
    with tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp, backing() as (db, redis):
        port = free_port()
        env = {
            "DATABASE_URL": db,
            "REDIS_URL": redis,
            "DATA_DIR": str(Path(tmp) / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "LOG_LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "nex.collector.server.cli", "serve", "--migrate"]
        with process(cli, env, Path(tmp) / "server.log"):
            wait_port(port)
            seconds = asyncio.run(through_collector(f"127.0.0.1:{port}", runs, args.repeats))
    bare = statistics.median(bare_render(runs) for _ in range(args.repeats))
    call = statistics.median(seconds)
    print(
        f"BatchCreateRuns N={args.runs} x{args.repeats}: median {call * 1000:7.1f} ms per call "
        f"({args.runs / call:7.0f} runs/s; min {min(seconds) * 1000:.1f}, "
        f"max {max(seconds) * 1000:.1f}) | bare Jinja render of the same runs "
        f"{bare * 1000:.1f} ms | ratio call/bare {call / bare:.1f}x"
    )


if __name__ == "__main__":
    main()
