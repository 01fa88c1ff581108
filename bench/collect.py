"""Collection throughput: N runs through the real server and worker against the
fake OpenAI server, timed from the first submit to the last COMPLETED event on
WatchRuns; in the same run, the baseline: a bare loop of the `openai` SDK
(AsyncOpenAI on its aiohttp transport, 64 requests in flight, same requests).

    python bench/collect.py [--runs 2000] [--latencies 0,200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, fake_teacher, free_port, process, wait_port  # noqa: E402

KEY = "sk-bench"
TOP_LOGPROBS = 5
MAX_TOKENS = 64
USER = "Write a short paragraph about {{ topic }}."


def prompts(n: int) -> list[str]:
    return [f"subject {i}" for i in range(n)]


async def bare_sdk(base_url: str, topics: list[str], concurrency: int = 64) -> float:
    """Runs/s of the SDK alone: create(), parse, keep the logprobs."""
    import openai

    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=f"{base_url}/v1",
        http_client=openai.DefaultAioHttpClient(),
        max_retries=0,
    )
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in topics:
        queue.put_nowait(t)
    kept: list[object] = []

    async def one_worker() -> None:
        while not queue.empty():
            topic = queue.get_nowait()
            reply = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": USER.replace("{{ topic }}", topic)}],
                logprobs=True,
                top_logprobs=TOP_LOGPROBS,
                max_tokens=MAX_TOKENS,
            )
            kept.append((reply.choices[0].message.content, reply.choices[0].logprobs))

    started = time.perf_counter()
    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    assert len(kept) == len(topics)
    return len(topics) / elapsed


async def through_collector(address: str, topics: list[str]) -> float:
    from nex.collector.client import AsyncClient, GenerationParams, RunStatus

    async with AsyncClient.connect(address, token="bench") as client:
        template = await client.create_template(
            f"bench-{time.time_ns()}", user_template=USER, variables=["topic"]
        )
        batch = await client.create_batch(
            "bench",
            template.id,
            "openai",
            "gpt-4o-mini",
            params=GenerationParams(top_logprobs=TOP_LOGPROBS, max_tokens=MAX_TOKENS),
        )
        completed = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal completed
            async for event in client.watch_batch(batch.id, follow=True):
                if event.status == RunStatus.COMPLETED:
                    completed += 1
                    if completed == len(topics):
                        done.set()
                        return
                elif event.status == RunStatus.FAILED:
                    raise RuntimeError(f"run failed: {event}")

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        for i in range(0, len(topics), 1000):
            await client.create_runs(batch.id, [{"topic": t} for t in topics[i : i + 1000]])
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - started
        await watcher
        return len(topics) / elapsed


def measure(
    latency_ms: float, n: int, workers: int, database_url: str, redis_url: str, logs: Path
) -> tuple[float, float]:
    topics = prompts(n)
    with fake_teacher(latency_ms, logs / f"fake-{latency_ms}.log") as base_url:
        baseline = asyncio.run(bare_sdk(base_url, topics))
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(logs / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "OPENAI_BASE_URL": f"{base_url}/v1",
            "OPENAI_API_KEY": KEY,
            "LOG_LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "nex.collector.server.cli"]
        with process([*cli, "serve", "--migrate"], env, logs / "server.log"):
            wait_port(port)
            worker_procs = [
                process([*cli, "worker"], env, logs / f"worker{i}.log") for i in range(workers)
            ]
            for w in worker_procs:
                w.__enter__()
            try:
                time.sleep(1.0)
                collector = asyncio.run(through_collector(f"127.0.0.1:{port}", topics))
            finally:
                for w in worker_procs:
                    w.__exit__(None, None, None)
    return baseline, collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latencies", default="0,200")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp,
        backing() as (database_url, redis_url),
    ):
        for latency in (float(x) for x in args.latencies.split(",")):
            baseline, collector = measure(
                latency, args.runs, args.workers, database_url, redis_url, Path(tmp)
            )
            rows.append((latency, baseline, collector))
            print(
                f"latency {latency:>5.0f} ms  N={args.runs}  bare SDK loop {baseline:8.1f} runs/s  "
                f"collector {collector:8.1f} runs/s  ratio {collector / baseline:5.2f}x",
                flush=True,
            )
    target_met = all(c / b >= 1.0 for _, b, c in rows)
    verdict = "met" if target_met else "NOT met"
    print(f"target (collector >= 1.0x the bare SDK loop at every latency): {verdict}")


if __name__ == "__main__":
    main()
