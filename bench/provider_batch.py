"""One batch in PROVIDER_BATCH mode through OpenAI's Batch API (the wire fake,
in its own process, with the real limit of 50,000 requests per input file):
N runs (100,000 by default) through the real server and one worker process.
Prints runs/s, the provider jobs and the largest one's request count (target
<= 50,000: split within the limit), completed / failed (target: all
completed), the cost against the online price (half), and the resident memory
of the worker (sampled every 0.5 s) and the server: at the start of
ingestion, its peak and at the end. "Memory flat while ingesting" means the
worker's peak minus its RSS when the first job's results started to arrive
stays under 100 MiB, whatever N: results are streamed and stored 500 at a
time (PROVIDER_JOB_INGEST_CHUNK), so the growth must not scale with the
50,000 results of a job: at the default answer (16 tokens, top-5 logprobs:
8.5 kB of JSON, ~27 kB as Python objects), one job's results are ~420 MB of
JSON, ~1.3 GB parsed, so holding them would pass the target many times over,
while a chunk of 500 is ~4 MB of JSON.

    python bench/provider_batch.py [--runs N | --quick] [--logs DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, fake_teacher, free_port, process, wait_port  # noqa: E402

KEY = "sk-bench"
MODEL = "gpt-4o-mini"
OPENAI_MAX_REQUESTS = 50_000  # per input file, as OpenAI's Batch API
USER = "Write a short paragraph about {{ topic }}."
CHUNK = 1000  # runs per BatchCreateRuns call
SAMPLE_S = 0.5
MIB = 2**20
RSS_GROWTH_TARGET_MIB = 100.0
# Ended at the provider (results can be read) or read: ingestion has begun.
_INGESTING = frozenset({"completed", "failed", "expired", "cancelled", "ingested"})
_SETTLED = frozenset({"ingested", "abandoned"})  # nothing more to do


@dataclass
class Sampler:
    """Samples the RSS of some processes every SAMPLE_S in a thread."""

    pids: dict[str, int]
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}

        def loop() -> None:
            while not self._stop.is_set():
                row: dict[str, float] = {}
                for name, p in procs.items():
                    with contextlib.suppress(psutil.Error):
                        row[name] = p.memory_info().rss / MIB
                self.samples.append((time.monotonic(), row))
                self._stop.wait(SAMPLE_S)

        self._thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def at(self, name: str, t: float) -> float:
        """The last sample at or before `t` (else the first one)."""
        before = [row[name] for ts, row in self.samples if ts <= t and name in row]
        if before:
            return before[-1]
        return next(row[name] for _, row in self.samples if name in row)

    def peak(self, name: str, start: float, end: float) -> float:
        return max(
            (row[name] for ts, row in self.samples if start <= ts <= end and name in row),
            default=self.at(name, end),
        )


@dataclass
class Outcome:
    runs: int
    create_s: float
    total_s: float
    completed: int
    failed: int
    jobs: list[int]  # request count of each provider job
    job_states: list[str]
    cost_usd: float
    saved_usd: float
    ingest_from: float  # monotonic: the last look that saw no result yet
    done_at: float  # monotonic: the batch seen COMPLETED


async def _collect(address: str, n: int, tokens: int, top: int) -> Outcome:
    from nex.collector.client import AsyncClient, BatchStatus, ExecutionMode, GenerationParams

    async with AsyncClient.connect(address, token="bench") as client:
        template = await client.create_template(
            f"provider-batch-{time.time_ns()}", user_template=USER, variables=["topic"]
        )
        batch = await client.create_batch(
            "provider-batch",
            template.id,
            "openai",
            MODEL,
            params=GenerationParams(top_logprobs=top, max_tokens=tokens + 16),
            execution_mode=ExecutionMode.PROVIDER_BATCH,
        )
        started = time.perf_counter()
        for i in range(0, n, CHUNK):
            await client.create_runs(
                batch.id, [{"topic": f"subject {j}"} for j in range(i, min(i + CHUNK, n))]
            )
        create_s = time.perf_counter() - started
        print(f"  {n} runs created in {create_s:.1f} s", flush=True)
        ingest_from = time.monotonic()
        last_states, printed = "", 0.0
        while True:
            looked = time.monotonic()
            view = await client.get_batch(batch.id)
            ingesting = view.counts.completed > 0 or any(
                j.state in _INGESTING for j in view.provider_jobs
            )
            if not ingesting:
                ingest_from = looked
            states = ", ".join(
                f"{j.state} {j.request_completed}/{j.request_total}" for j in view.provider_jobs
            )
            # The batch is COMPLETED with its last run stored, a moment before
            # its last job is marked ingested with its cost (and the saving).
            ended = view.status in (BatchStatus.COMPLETED, BatchStatus.CANCELLED) and all(
                j.state in _SETTLED for j in view.provider_jobs
            )
            # Each change of a job, else every 5 s.
            if states != last_states or looked - printed >= 5 or ended:
                elapsed = time.perf_counter() - started
                print(
                    f"  {elapsed:7.1f} s  jobs [{states}]  completed {view.counts.completed}",
                    flush=True,
                )
                last_states, printed = states, looked
            if ended:
                break
            await asyncio.sleep(SAMPLE_S)
        return Outcome(
            runs=n,
            create_s=create_s,
            total_s=time.perf_counter() - started,
            completed=view.counts.completed,
            failed=view.counts.failed,
            jobs=[j.request_total for j in view.provider_jobs],
            job_states=[j.state for j in view.provider_jobs],
            cost_usd=view.usage.cost_usd,
            saved_usd=view.provider_batch_saved_usd,
            ingest_from=ingest_from,
            done_at=time.monotonic(),
        )


def _wait_ready(log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and "nex-collector ready" in log.read_text()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start (see {log})")
        time.sleep(0.2)


def run(n: int, tokens: int, top: int, logs: Path) -> bool:
    extra = ("--api-key", KEY, "--answer-tokens", str(tokens))
    with backing() as (database_url, redis_url), fake_teacher(0, logs / "fake.log", *extra) as url:
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(logs / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "OPENAI_BASE_URL": f"{url}/v1",
            "OPENAI_API_KEY": KEY,
            # A tick is also how long a batch must go without new runs before
            # they make a job: longer than one BatchCreateRuns call of 1,000
            # runs, so the runs make as few jobs as the limit allows.
            "PROVIDER_JOB_TICK_S": "2",
            "PROVIDER_JOB_POLL_S": "0.2",
            "PROVIDER_JOB_MAX_POLL_S": "1",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
        cli = [sys.executable, "-m", "nex.collector.server.cli"]
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(process([*cli, "serve", "--migrate"], env, logs / "s.log"))
            wait_port(port)
            worker = stack.enter_context(process([*cli, "worker"], env, logs / "worker.log"))
            _wait_ready(logs / "worker.log")
            sampler = stack.enter_context(Sampler({"worker": worker.pid, "server": server.pid}))
            began = time.monotonic()
            out = asyncio.run(_collect(f"127.0.0.1:{port}", n, tokens, top))
            time.sleep(SAMPLE_S)  # one more sample after the end
    return report(out, sampler, began)


def report(out: Outcome, sampler: Sampler, began: float) -> bool:
    n = out.runs
    largest = max(out.jobs, default=0)
    online = out.cost_usd + out.saved_usd
    print(
        f"N={n}: {n / out.total_s:7.1f} runs/s ({out.total_s:.1f} s from the first "
        f"BatchCreateRuns to the batch COMPLETED and its jobs ingested; creating the runs "
        f"{out.create_s:.1f} s)"
    )
    print(
        f"provider jobs: {len(out.jobs)} (fewest possible {math.ceil(n / OPENAI_MAX_REQUESTS)}), "
        f"requests per job {sorted(out.jobs, reverse=True)}, largest {largest} "
        f"(target <= {OPENAI_MAX_REQUESTS}), states {sorted(set(out.job_states))}"
    )
    print(f"runs: completed {out.completed}, failed {out.failed} (target: all {n} completed)")
    print(
        f"cost: ${out.cost_usd:.4f} at the batch price vs ${online:.4f} online = "
        f"{out.cost_usd / online if online else 0:.2f}x (saved ${out.saved_usd:.4f})"
    )
    rows: dict[str, tuple[float, float, float, float, float]] = {}
    for name in ("worker", "server"):
        idle = sampler.at(name, began)
        start = sampler.at(name, out.ingest_from)
        peak = sampler.peak(name, out.ingest_from, out.done_at)
        end = sampler.at(name, out.done_at + SAMPLE_S)
        overall = sampler.peak(name, began, out.done_at + SAMPLE_S)
        rows[name] = (idle, start, peak, end, overall)
        print(
            f"{name} RSS (MiB): before the runs {idle:.0f}; ingestion "
            f"({out.done_at - out.ingest_from:.1f} s) start {start:.0f}, peak {peak:.0f}, "
            f"end {end:.0f}; growth peak - start "
            f"{peak - start:.1f} MiB = {peak / start:.2f}x; peak over the whole bench {overall:.0f}"
        )
    span = out.done_at - out.ingest_from
    trail = " ".join(
        f"{sampler.at('worker', out.ingest_from + span * i / 10):.0f}" for i in range(11)
    )
    print(f"worker RSS (MiB) at each tenth of the ingestion: {trail}")
    _, start, peak, _, _ = rows["worker"]
    checks = {
        f"all {n} completed": out.completed == n and out.failed == 0,
        f"jobs within {OPENAI_MAX_REQUESTS} requests": 0 < largest <= OPENAI_MAX_REQUESTS,
        f"worker RSS growth while ingesting < {RSS_GROWTH_TARGET_MIB:.0f} MiB": peak - start
        < RSS_GROWTH_TARGET_MIB,
    }
    for what, ok in checks.items():
        print(f"  {what}: {'met' if ok else 'NOT met'}")
    met = all(checks.values())
    print(f"targets (provider batch, N={n}): {'met' if met else 'NOT met'}", flush=True)
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the batch")
    parser.add_argument("--quick", action="store_true", help="20,000 runs (a smoke test)")
    parser.add_argument("--answer-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--top-logprobs", type=int, default=5)
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        run(n, args.answer_tokens, args.top_logprobs, logs)


if __name__ == "__main__":
    main()
