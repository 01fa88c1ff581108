"""Collection throughput: N runs through the real server and worker against the
fake OpenAI server, timed from the first submit to the last COMPLETED event on
WatchRuns; in the same run, the baseline: a bare loop of the `openai` SDK
(AsyncOpenAI on its aiohttp transport, 64 requests in flight, same requests).

    python bench/collect.py [--runs 2000] [--latencies 0,200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

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


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


_DELAY = "nex_collector_answer_commit_seconds_bucket"


def _delay_buckets(ports: list[int]) -> dict[float, float]:
    """The workers' answer-received-to-committed histogram: cumulative count per
    upper bound, summed over the workers."""
    buckets: dict[float, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith(_DELAY + "{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                le = float("inf") if bound == "+Inf" else float(bound)
                buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """The q-quantile (seconds) of what was observed between two scrapes,
    interpolated within its bucket as Prometheus' histogram_quantile does."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def measure(
    latency_ms: float,
    n: int,
    workers: int,
    repeats: int,
    database_url: str,
    redis_url: str,
    logs: Path,
) -> tuple[list[float], list[float], float, float, tuple[float, float]]:
    """Alternates baseline and collector `repeats` times (the machine's noise hits
    both alike); returns their runs/s, CPU ms per run (collector: server +
    worker), and the p50 and p99 of answer received -> committed in the workers (s)."""
    topics = prompts(n)
    baseline: list[float] = []
    collector: list[float] = []
    cpu_base = cpu_coll = 0.0
    with fake_teacher(latency_ms, logs / f"fake-{latency_ms}.log") as base_url:
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
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(
                process([*cli, "serve", "--migrate"], env, logs / "server.log")
            )
            wait_port(port)
            metric_ports = [free_port() for _ in range(workers)]
            procs = [server] + [
                stack.enter_context(
                    process(
                        [*cli, "worker"],
                        {**env, "METRICS_ADDR": f"127.0.0.1:{metric_ports[i]}"},
                        logs / f"worker{i}.log",
                    )
                )
                for i in range(workers)
            ]
            time.sleep(1.0)
            asyncio.run(through_collector(f"127.0.0.1:{port}", prompts(50)))  # warm up both
            asyncio.run(bare_sdk(base_url, prompts(50)))
            delays_before = _delay_buckets(metric_ports)
            for _ in range(repeats):
                before = time.process_time()
                baseline.append(asyncio.run(bare_sdk(base_url, topics)))
                cpu_base += time.process_time() - before
                before = _cpu_s([p.pid for p in procs])
                collector.append(asyncio.run(through_collector(f"127.0.0.1:{port}", topics)))
                cpu_coll += _cpu_s([p.pid for p in procs]) - before
            delays_after = _delay_buckets(metric_ports)
            p50, p99 = (_quantile(q, delays_before, delays_after) for q in (0.5, 0.99))
            print(asyncio.run(_in_flight(database_url)), flush=True)
    runs = n * repeats
    return baseline, collector, cpu_base / runs * 1000, cpu_coll / runs * 1000, (p50, p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--latencies", default="0,200")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp, backing() as (db, redis):
        for latency in (float(x) for x in args.latencies.split(",")):
            base, coll, cpu_b, cpu_c, (p50, p99) = measure(
                latency, args.runs, args.workers, args.repeats, db, redis, Path(tmp)
            )
            b, c = statistics.median(base), statistics.median(coll)
            ratios.append(c / b)
            print(
                f"latency {latency:>4.0f} ms  N={args.runs} x{args.repeats}  "
                f"bare SDK loop {b:7.1f} runs/s ({_spread(base)})  "
                f"collector {c:7.1f} runs/s ({_spread(coll)})  ratio {c / b:4.2f}x  "
                f"| CPU per run: SDK loop {cpu_b:.1f} ms, collector {cpu_c:.1f} ms (server+worker) "
                f"| answer received -> committed p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms",
                flush=True,
            )
    verdict = "met" if all(r >= 1.0 for r in ratios) else "NOT met"
    print(f"target (collector >= 1.0x the bare SDK loop at every latency, medians): {verdict}")


async def _in_flight(database_url: str) -> str:
    """How the last batch's runs spent their time (a diagnostic)."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        row = await conn.fetchrow(
            """
            WITH b AS (SELECT batch_id FROM run_events ORDER BY revision DESC LIMIT 1),
            r AS (
              SELECT run_id,
                     min(time) FILTER (WHERE status = 'queued') AS q,
                     max(time) FILTER (WHERE status = 'running') AS s,
                     max(time) FILTER (WHERE status = 'completed') AS c
              FROM run_events WHERE batch_id = (SELECT batch_id FROM b) GROUP BY run_id)
            SELECT avg(extract(epoch FROM s - q)) AS queued,
                   avg(extract(epoch FROM c - s)) AS running,
                   extract(epoch FROM max(c) - min(q)) AS total, count(*) AS n FROM r
            """
        )
    finally:
        await conn.close()
    in_flight = row["n"] * row["running"] / row["total"]
    return (
        f"    (last batch: mean {row['queued'] * 1000:.0f} ms queued, "
        f"{row['running'] * 1000:.0f} ms running, {in_flight:.0f} runs in flight on average)"
    )


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


if __name__ == "__main__":
    main()
