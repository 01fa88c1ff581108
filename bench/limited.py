"""A teacher that enforces its limit the way OpenAI does (requests/min granted
per one-second window, 429 with retry-after-ms and x-ratelimit-* headers,
100 ms per call, answers of 200 tokens with top-5 logprobs): N runs of one
batch through the real server and worker processes, with nothing configured
(the limit is learned from the headers). Prints runs/s as a ratio of the
limit (target >= 0.85), runs failed (target 0) and 429s as a share of the
calls served (target <= 10 %).

    python bench/limited.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, fake_teacher, free_port, process, wait_port  # noqa: E402

KEY = "sk-bench"
LATENCY_MS = 100
ANSWER_TOKENS = 200
USER = "Write a short paragraph about {{ topic }}."


def _stats(base_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base_url}/stats", timeout=10) as reply:
        stats: dict[str, int] = json.loads(reply.read())
    return stats


async def _collect(address: str, n: int) -> tuple[float, int, int]:
    """Seconds from the first submit to the last run done; completed; failed."""
    from nex.collector.client import AsyncClient, BatchStatus, GenerationParams

    async with AsyncClient.connect(address, token="bench") as client:
        template = await client.create_template(
            f"limited-{time.time_ns()}", user_template=USER, variables=["topic"]
        )
        batch = await client.create_batch(
            "limited",
            template.id,
            "openai",
            "gpt-4o-mini",
            params=GenerationParams(top_logprobs=5, max_tokens=ANSWER_TOKENS + 50),
        )
        started = time.perf_counter()
        for i in range(0, n, 1000):
            await client.create_runs(
                batch.id, [{"topic": f"subject {j}"} for j in range(i, min(i + 1000, n))]
            )
        while True:
            view = await client.get_batch(batch.id)
            if view.status == BatchStatus.COMPLETED:
                break
            await asyncio.sleep(0.1)
        return time.perf_counter() - started, view.counts.completed, view.counts.failed


def _wait_ready(worker_logs: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(log.exists() and "nex-collector ready" in log.read_text() for log in worker_logs):
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not start")
        time.sleep(0.2)


def case(rpm: int, n: int, workers: int, database_url: str, redis_url: str, logs: Path) -> bool:
    extra = ("--rpm", str(rpm), "--answer-tokens", str(ANSWER_TOKENS), "--api-key", KEY)
    with fake_teacher(LATENCY_MS, logs / f"fake-{rpm}.log", *extra) as base_url:
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(logs / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "OPENAI_BASE_URL": f"{base_url}/v1",
            "OPENAI_API_KEY": KEY,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        cli = [sys.executable, "-m", "nex.collector.server.cli"]
        with contextlib.ExitStack() as stack:
            stack.enter_context(process([*cli, "serve", "--migrate"], env, logs / "server.log"))
            wait_port(port)
            worker_logs = [logs / f"worker-{rpm}-{i}.log" for i in range(workers)]
            for log in worker_logs:
                stack.enter_context(process([*cli, "worker"], env, log))
            _wait_ready(worker_logs)
            elapsed, completed, failed = asyncio.run(_collect(f"127.0.0.1:{port}", n))
        stats = _stats(base_url)
    ratio = completed / elapsed / (rpm / 60)
    share = stats["rate_limited"] / max(stats["served"], 1)
    met = ratio >= 0.85 and failed == 0 and share <= 0.10
    print(
        f"limit {rpm:>5} req/min, {workers} worker(s), N={n}: {completed / elapsed:6.1f} runs/s "
        f"= {ratio:4.2f}x the limit (target >= 0.85)  failed {failed} (target 0)  "
        f"429s {stats['rate_limited']} = {share:5.1%} of {stats['served']} served "
        f"(target <= 10 %)  {'met' if met else 'NOT met'}",
        flush=True,
    )
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    parser.add_argument("--only", type=int, default=None, help="run only the case of this limit")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    results = []
    with tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp, backing() as (db, redis):
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        # 1,200 req/min with 1 worker: N runs take a minute; 6,000 with 3 workers.
        for rpm, workers in ((1200, 1), (6000, 3)):
            if args.only in (None, rpm):
                results.append(case(rpm, rpm // scale, workers, db, redis, logs))
    print(f"targets (limited teacher): {'met' if all(results) else 'NOT met'}")


if __name__ == "__main__":
    main()
