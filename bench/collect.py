"""Collection throughput against its peers, in one run, on one fake teacher.

Per case (answer length in tokens x teacher latency x how the collector runs),
the same N prompts, top-5 logprobs asked for (Curator: text only), go through:

- the collector: the real server and worker(s), timed from the first submit to
  the last COMPLETED event on WatchBatch; either `nex-collector dev` (one
  process, the way `make dev` runs it) or `serve` + `worker` processes;
- the bare `openai` SDK loop: AsyncOpenAI on its aiohttp transport, 64 requests
  in flight, logprobs kept;
- a raw aiohttp + orjson loop, 64 in flight, logprobs kept (the client-side
  limit of this box);
- Curator 0.1.31 in its own venv (bench/.venv-curator, made on first use),
  asking for text only since it cannot keep logprobs.

Printed per case: runs/s of each, the collector's ratios to each peer, CPU ms
per run of every process on the box that takes part (server, workers,
PostgreSQL, Redis, the fake, the benchmark's client), bytes stored per output
token in PostgreSQL (growth of every table, and the live rows of the batch)
and in Parquet (a dataset built from the batch), and the workers' answer
received -> committed p50/p99. Then a table of every case and the targets.

    python bench/collect.py [--runs 500] [--tokens 64,256] [--latencies 0,200]
        [--modes dev,serve] [--workers N] [--repeats 1] [--peers sdk,raw,curator]

The machine is shared and noisy: read the ratios (peers and collector measured
back to back), not the absolute numbers; --repeats N alternates them N times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _curator  # noqa: E402
from bench._support import (  # noqa: E402
    backing,
    fake_teacher_process,
    free_port,
    machine_busy_s,
    postgres_root_pid,
    process,
    redis_root_pid,
    self_cpu_s,
    tree_cpu_s,
    wait_port,
)
from nex.collector.server.worker.processes import default_count  # noqa: E402

KEY = "sk-bench"
TOP_LOGPROBS = 5
CONCURRENCY = 64
MODEL = "gpt-4o-mini"
USER = "Write a short paragraph about {{ topic }}."
PEERS = ("sdk", "raw", "curator")
PEER_ROLES = ("client", "curator process", "fake teacher")
PEER_NAMES = {
    "sdk": "bare SDK loop (aiohttp)",
    "raw": "raw aiohttp + orjson",
    "curator": "Curator 0.1.31 (text only)",
}

# Part 2 of issue 12: (tokens, latency ms, peer, at least this ratio).
TARGETS = (
    (64, 0.0, "sdk", 1.5),
    (64, 0.0, "curator", 1.0),
    (256, 0.0, "sdk", 2.0),
    (64, 200.0, "curator", 1.3),
)


def prompts(n: int, offset: int = 0) -> list[str]:
    return [f"subject {i}" for i in range(offset, offset + n)]


def _content(topic: str) -> str:
    return USER.replace("{{ topic }}", topic)


# -- the peers --------------------------------------------------------------------------


async def _drain(topics: list[str], one: Callable[[str], Any], concurrency: int) -> float:
    """Runs/s of `one` over the topics with `concurrency` in flight."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for t in topics:
        queue.put_nowait(t)

    async def worker() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(topics) / (time.perf_counter() - started)


async def bare_sdk(base_url: str, topics: list[str], tokens: int) -> float:
    """Runs/s of the SDK alone: create(), parse, keep the text and logprobs."""
    import openai

    client = openai.AsyncOpenAI(
        api_key=KEY,
        base_url=f"{base_url}/v1",
        http_client=openai.DefaultAioHttpClient(),
        max_retries=0,
        # The SDK's 5 s connect timeout fails whole passes when other jobs load the box.
        timeout=openai.Timeout(300, connect=60),
    )
    kept: list[object] = []

    async def one(topic: str) -> None:
        reply = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": _content(topic)}],
            logprobs=True,
            top_logprobs=TOP_LOGPROBS,
            max_tokens=tokens,
        )
        kept.append((reply.choices[0].message.content, reply.choices[0].logprobs))

    try:
        rate = await _drain(topics, one, CONCURRENCY)
    finally:
        await client.close()
    assert len(kept) == len(topics)
    return rate


async def raw_loop(base_url: str, topics: list[str], tokens: int) -> float:
    """Runs/s of the least a client can do: aiohttp, orjson, keep text and logprobs."""
    import aiohttp
    import orjson

    url = f"{base_url}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    kept: list[object] = []
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(topic: str) -> None:
            body = orjson.dumps(
                {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": _content(topic)}],
                    "logprobs": True,
                    "top_logprobs": TOP_LOGPROBS,
                    "max_tokens": tokens,
                }
            )
            async with session.post(url, data=body, headers=headers) as reply:
                reply.raise_for_status()
                choice = orjson.loads(await reply.read())["choices"][0]
            kept.append((choice["message"]["content"], choice["logprobs"]["content"]))

        rate = await _drain(topics, one, CONCURRENCY)
    assert len(kept) == len(topics)
    return rate


# -- the collector ----------------------------------------------------------------------


async def through_collector(address: str, topics: list[str], tokens: int) -> tuple[float, str]:
    """Runs/s from the first submit to the last COMPLETED event, and the batch id."""
    from nex.collector.client import AsyncClient, GenerationParams, RunStatus

    async with AsyncClient.connect(address, token="bench") as client:
        template = await client.create_template(
            f"bench-{time.time_ns()}", user_template=USER, variables=["topic"]
        )
        batch = await client.create_batch(
            "bench",
            template.id,
            "openai",
            MODEL,
            params=GenerationParams(top_logprobs=TOP_LOGPROBS, max_tokens=tokens),
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
        waiting = asyncio.create_task(done.wait())
        finished, _ = await asyncio.wait(
            {waiting, watcher}, timeout=900, return_when=asyncio.FIRST_COMPLETED
        )
        if waiting not in finished:
            waiting.cancel()
            if watcher in finished:
                watcher.result()  # the run that failed
            raise TimeoutError(f"{completed} of {len(topics)} runs completed in 900 s")
        elapsed = time.perf_counter() - started
        await watcher
        return len(topics) / elapsed, batch.id


async def parquet_bytes(address: str, batch_id: str) -> tuple[int, int]:
    """Builds a dataset of the batch: (bytes of its Parquet files, rows)."""
    from nex.collector.client import AsyncClient

    async with AsyncClient.connect(address, token="bench") as client:
        manifest = await client.build_dataset("bench", f"b-{time.time_ns()}", [batch_id])
        ready = await client.wait_dataset(manifest.id, timeout=600, poll_interval=0.1)
    files = [f for f in ready.files if f.name.endswith(".parquet")]
    return sum(f.bytes for f in files), ready.counts.total


# -- storage in PostgreSQL --------------------------------------------------------------


def _plain(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def table_sizes(database_url: str) -> dict[str, int]:
    """pg_total_relation_size (heap, TOAST, indexes) of every table."""
    import asyncpg

    conn = await asyncpg.connect(_plain(database_url))
    try:
        rows = await conn.fetch(
            "SELECT relname, pg_total_relation_size(relid) AS size FROM pg_stat_user_tables"
        )
    finally:
        await conn.close()
    return {r["relname"]: int(r["size"]) for r in rows}


async def live_bytes(database_url: str, batch_id: str) -> dict[str, int]:
    """Bytes of the batch's own rows (pg_column_size of each row, TOAST
    compressed sizes included) in every table with a batch_id column."""
    import asyncpg

    conn = await asyncpg.connect(_plain(database_url))
    try:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND column_name = 'batch_id'"
            )
        ]
        sizes = {}
        for t in tables:
            size = await conn.fetchval(
                f'SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM "{t}" t WHERE batch_id = $1',
                batch_id,
            )
            if size:
                sizes[t] = int(size)
    finally:
        await conn.close()
    return sizes


# -- CPU of the box -----------------------------------------------------------------------


@dataclass
class Box:
    """The processes that take part, by role; CPU seconds read per role."""

    roles: dict[str, list[int]] = field(default_factory=dict)
    dev: int | None = None  # `nex-collector dev`: its own process and its children apart

    def read(self) -> dict[str, float]:
        cpu = {role: sum(tree_cpu_s(p) for p in pids) for role, pids in self.roles.items()}
        if self.dev is not None:
            import psutil

            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.dev)
                t = root.cpu_times()
                cpu["dev: server process"] = float(t.user + t.system)
                cpu["dev: its children (workers, sandboxes)"] = float(
                    t.children_user + t.children_system
                ) + sum(tree_cpu_s(c.pid) for c in root.children())
        cpu["client"] = self_cpu_s()
        cpu["machine"] = machine_busy_s()
        return cpu

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in after}


# -- one case ---------------------------------------------------------------------------


@dataclass
class Case:
    tokens: int
    latency_ms: float
    mode: str  # "dev" or "serve"
    workers: int
    runs: int
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # peer -> role -> seconds
    notes: dict[str, str] = field(default_factory=dict)  # peer -> why it has no figure
    pg_growth: dict[str, int] = field(default_factory=dict)
    pg_live: dict[str, int] = field(default_factory=dict)
    parquet: tuple[int, int] | None = None
    delays: tuple[float, float] = (math.nan, math.nan)
    in_flight: str = ""

    @property
    def label(self) -> str:
        how = (
            f"make dev ({self.workers} worker proc.)"
            if self.mode == "dev"
            else f"serve + {self.workers} worker(s)"
        )
        return f"{self.tokens} tokens, top-{TOP_LOGPROBS}, {self.latency_ms:.0f} ms, {how}"

    def rate(self, peer: str) -> float:
        values = self.rates.get(peer)
        return statistics.median(values) if values else math.nan

    def add_cpu(self, peer: str, spent: dict[str, float]) -> None:
        into = self.cpu.setdefault(peer, {})
        for k, v in spent.items():
            into[k] = into.get(k, 0.0) + v


def _spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else ""


def report(case: Case) -> None:
    out = [f"== {case.label}  (N={case.runs} x{len(case.rates.get('collector', []))})"]
    n_total = {p: case.runs * len(v) for p, v in case.rates.items()}
    coll = case.rate("collector")
    for peer in ("collector", *PEERS):
        name = "collector" if peer == "collector" else PEER_NAMES[peer]
        if peer in case.notes:
            out.append(f"  {name:<28} -- {case.notes[peer]}")
            continue
        if peer not in case.rates:
            continue
        cpu = case.cpu.get(peer, {})
        per = {k: v / n_total[peer] * 1000 for k, v in cpu.items()}
        # A peer's own work: its client process and the fake; the collector's
        # idle processes and the database are listed apart.
        roles = [k for k in per if k != "machine" and (peer == "collector" or k in PEER_ROLES)]
        idle = sum(v for k, v in per.items() if k != "machine" and k not in roles)
        ours = sum(per[k] for k in roles)
        split = "  ".join(f"{k} {per[k]:.2f}" for k in roles if per[k] >= 0.005)
        if peer != "collector":
            split += f"  = {ours:.2f} (idle collector, PostgreSQL, Redis: {idle:.2f})"
        else:
            split += f"  = {ours:.2f}"
        ratio = "" if peer == "collector" else f"  collector/this {coll / case.rate(peer):4.2f}x"
        out.append(
            f"  {name:<28} {case.rate(peer):7.1f} runs/s {_spread(case.rates[peer]):>9}{ratio}"
        )
        out.append(
            f"  {'':<28} CPU ms/run: {split}; machine, all sessions:"
            f" {per.get('machine', math.nan):.2f}"
        )
    tokens = case.runs * case.tokens
    if case.pg_growth:
        grown = sum(case.pg_growth.values())
        parts = ", ".join(
            f"{t} {b / tokens:.0f}" for t, b in sorted(case.pg_growth.items(), key=lambda x: -x[1])
        )
        out.append(
            f"  PostgreSQL: {grown / tokens:.0f} bytes/output token on disk"
            f" ({grown / case.runs:,.0f} bytes/run; {parts})"
        )
    if case.pg_live:
        live = sum(case.pg_live.values())
        parts = ", ".join(f"{t} {b / tokens:.0f}" for t, b in case.pg_live.items())
        out.append(
            f"              {live / tokens:.0f} bytes/output token in the batch's live rows"
            f" ({live / case.runs:,.0f} bytes/run; {parts})"
        )
    if case.parquet is not None:
        size, rows = case.parquet
        out.append(
            f"  Parquet: {size / max(rows * case.tokens, 1):.1f} bytes/output token"
            f" ({size:,} bytes for {rows} runs)"
        )
    p50, p99 = case.delays
    delays = (
        "answer received -> committed: no figure (dev's workers serve no metrics)"
        if math.isnan(p99)
        else f"answer received -> committed p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )
    out.append(f"  {delays}" + (f"  {case.in_flight}" if case.in_flight else ""))
    print("\n".join(out), flush=True)


# -- the collector's processes ----------------------------------------------------------


@contextlib.contextmanager
def collector(
    mode: str, workers: int, env: dict[str, str], logs: Path, box: Box
) -> Iterator[tuple[str, list[int]]]:
    """The collector as `make dev` runs it (one process) or as serve + workers;
    yields its address and the ports of its metrics."""
    cli = [sys.executable, "-m", "nex.collector.server.cli"]
    port = free_port()
    env = {**env, "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}"}
    with contextlib.ExitStack() as stack:
        if mode == "dev":
            # No METRICS_ADDR: dev's worker processes would inherit it and clash
            # on the port, so dev has no answer -> commit figure.
            metrics = []
            dev = stack.enter_context(
                process([*cli, "dev", "--workers", str(workers)], env, logs / "dev.log")
            )
            box.dev = dev.pid
            wait_port(port)
        else:
            server = stack.enter_context(
                process([*cli, "serve", "--migrate"], env, logs / "server.log")
            )
            box.roles["server"] = [server.pid]
            wait_port(port)
            metrics = [free_port() for _ in range(workers)]
            procs = [
                stack.enter_context(
                    process(
                        [*cli, "worker"],
                        {**env, "METRICS_ADDR": f"127.0.0.1:{m}"},
                        logs / f"worker{i}.log",
                    )
                )
                for i, m in enumerate(metrics)
            ]
            box.roles["workers"] = [p.pid for p in procs]
            for m in metrics:
                wait_port(m)
        try:
            yield f"127.0.0.1:{port}", metrics
        finally:
            box.dev = None
            for role in ("server", "workers"):
                box.roles.pop(role, None)


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


@dataclass
class Settings:
    runs: int
    repeats: int
    workers: int
    peers: tuple[str, ...]
    database_url: str
    redis_url: str
    logs: Path
    curator_problem: str | None


def measure(case: Case, base_url: str, s: Settings, box: Box, offset: list[int]) -> None:
    """Starts the collector the case's way; then `repeats` times, back to back:
    each peer, then the collector, on fresh prompts (no cache can answer)."""
    env = {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "DATA_DIR": str(s.logs / "data"),
        "NEX_COLLECTOR_TOKENS": "bench",
        "OPENAI_BASE_URL": f"{base_url}/v1",
        "OPENAI_API_KEY": KEY,
        "LOG_LEVEL": "WARNING",
    }

    def fresh(n: int) -> list[str]:
        offset[0] += n
        return prompts(n, offset[0] - n)

    with collector(case.mode, s.workers, env, s.logs, box) as (address, metric_ports):
        asyncio.run(through_collector(address, fresh(50), case.tokens))  # warm up
        asyncio.run(bare_sdk(base_url, fresh(50), case.tokens))
        delays_before = _delay_buckets(metric_ports)
        for repeat in range(s.repeats):
            for peer in s.peers:
                topics = fresh(s.runs)
                before = box.read()
                rate: float | str
                try:
                    if peer == "sdk":
                        rate = asyncio.run(bare_sdk(base_url, topics, case.tokens))
                    elif peer == "raw":
                        rate = asyncio.run(raw_loop(base_url, topics, case.tokens))
                    else:
                        rate = _curator_pass(base_url, s, case, offset[0] - s.runs)
                except Exception as exc:  # a peer less; the others still count
                    rate = f"failed: {exc!r}"
                spent = Box.spent(before, box.read())
                if isinstance(rate, str):
                    case.notes[peer] = rate
                    continue
                case.rates.setdefault(peer, []).append(rate)
                case.add_cpu(peer, spent)
            sizes = asyncio.run(table_sizes(s.database_url))
            before = box.read()
            rate, batch_id = asyncio.run(through_collector(address, fresh(s.runs), case.tokens))
            case.add_cpu("collector", Box.spent(before, box.read()))
            case.rates.setdefault("collector", []).append(rate)
            if repeat == 0:
                grown = asyncio.run(table_sizes(s.database_url))
                case.pg_growth = {
                    t: grown[t] - sizes.get(t, 0) for t in grown if grown[t] != sizes.get(t, 0)
                }
                case.pg_live = asyncio.run(live_bytes(s.database_url, batch_id))
                with contextlib.suppress(Exception):
                    case.in_flight = asyncio.run(_in_flight(s.database_url, batch_id))
                try:
                    case.parquet = asyncio.run(parquet_bytes(address, batch_id))
                except Exception as exc:  # a figure less, the others still count
                    print(f"  (no Parquet figure: {exc!r})", flush=True)
        delays_after = _delay_buckets(metric_ports)
        case.delays = (
            _quantile(0.5, delays_before, delays_after),
            _quantile(0.99, delays_before, delays_after),
        )


def _curator_pass(base_url: str, s: Settings, case: Case, offset: int) -> float | str:
    """Runs/s of one Curator pass, or why there is none. Its CPU is read by the
    subprocess itself and put in the box's "curator" role here."""
    if s.curator_problem is not None:
        return s.curator_problem
    result = _curator.run_pass(base_url, s.runs, case.tokens, offset, _curator.PASS_LOG)
    if isinstance(result, str):
        return result
    case.add_cpu("curator", {"curator process": result.cpu_s})
    return result.runs_per_s


async def _in_flight(database_url: str, batch_id: str) -> str:
    """How the batch's runs spent their time (a diagnostic)."""
    import asyncpg

    conn = await asyncpg.connect(_plain(database_url))
    try:
        row = await conn.fetchrow(
            """
            WITH r AS (
              SELECT run_id,
                     min(time) FILTER (WHERE status = 'queued') AS q,
                     max(time) FILTER (WHERE status = 'running') AS s,
                     max(time) FILTER (WHERE status = 'completed') AS c
              FROM run_events WHERE batch_id = $1 GROUP BY run_id)
            SELECT avg(extract(epoch FROM s - q)) AS queued,
                   avg(extract(epoch FROM c - s)) AS running,
                   extract(epoch FROM max(c) - min(q)) AS total, count(*) AS n FROM r
            """,
            batch_id,
        )
    finally:
        await conn.close()
    in_flight = row["n"] * row["running"] / row["total"]
    return (
        f"(mean {row['queued'] * 1000:.0f} ms queued, {row['running'] * 1000:.0f} ms running,"
        f" {in_flight:.0f} runs in flight on average)"
    )


# -- the summary ------------------------------------------------------------------------


def _fig(case: Case, peer: str) -> str:
    return "n/a" if math.isnan(case.rate(peer)) else f"{case.rate(peer):.0f}"


def _ratio(case: Case, peer: str) -> str:
    got = case.rate("collector") / case.rate(peer)
    return "n/a" if math.isnan(got) else f"{got:.2f}x"


def summary(cases: list[Case]) -> None:
    print("\n| case | collector | SDK loop | raw aiohttp+orjson | Curator (text only) "
          "| coll/SDK | coll/Curator | coll/raw | collector CPU ms/run | PG B/token "
          "| Parquet B/token |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        coll = c.rate("collector")
        cpu = c.cpu.get("collector", {})
        n = c.runs * max(len(c.rates.get("collector", [])), 1)
        ours = sum(v for k, v in cpu.items() if k != "machine") / n * 1000
        tokens = c.runs * c.tokens
        pg = sum(c.pg_growth.values()) / tokens if c.pg_growth else math.nan
        pq = c.parquet[0] / max(c.parquet[1] * c.tokens, 1) if c.parquet else math.nan
        print(
            f"| {c.label} | {coll:.0f} | {_fig(c, 'sdk')} | {_fig(c, 'raw')}"
            f" | {_fig(c, 'curator')} | {_ratio(c, 'sdk')} | {_ratio(c, 'curator')}"
            f" | {_ratio(c, 'raw')} | {ours:.2f}"
            f" | {pg:.0f} | {pq:.1f} |"
        )
    print("\ntargets (issue 12, part 2; medians):")
    for tokens, latency, peer, want in TARGETS:
        for c in cases:
            if c.tokens != tokens or c.latency_ms != latency:
                continue
            got = c.rate("collector") / c.rate(peer)
            verdict = (
                "no figure"
                if math.isnan(got)
                else f"{got:.2f}x " + ("met" if got >= want else "NOT met")
            )
            print(f"  {c.label}: collector >= {want}x {PEER_NAMES[peer]}: {verdict}")


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main() -> None:
    # A SIGTERM (e.g. `timeout`) unwinds like Ctrl-C: the collector, the fake and
    # the embedded PostgreSQL and Redis are stopped, not left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=500, help="runs per measurement")
    parser.add_argument("--tokens", default="64,256", help="answer lengths, comma-separated")
    parser.add_argument("--latencies", default="0,200", help="teacher latencies in ms")
    parser.add_argument(
        "--modes", default="dev,serve", help="dev: `nex-collector dev`; serve: serve + workers"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_count(),
        help="worker processes (serve and dev); default: what `dev` starts, one per core",
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternations per case")
    parser.add_argument("--peers", default=",".join(PEERS), help="any of sdk,raw,curator")
    args = parser.parse_args()
    peers = tuple(_list(args.peers))
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers: {sorted(unknown)}")
    modes = _list(args.modes)
    if unknown := set(modes) - {"dev", "serve"}:
        parser.error(f"unknown modes: {sorted(unknown)}")

    curator_problem = _curator.ensure() if "curator" in peers else None
    _curator.PASS_LOG.unlink(missing_ok=True)
    if curator_problem:
        print(f"Curator: {curator_problem}; going on without it", flush=True)
    print(
        f"{args.runs} runs per measurement, {CONCURRENCY} in flight for the peers, top-"
        f"{TOP_LOGPROBS} logprobs (Curator: text only). The machine is shared: read ratios.",
        flush=True,
    )
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp, backing() as (db, redis):
        logs = Path(tmp)
        box = Box()
        pg, rd = asyncio.run(postgres_root_pid(db)), redis_root_pid(redis)
        if pg is not None:
            box.roles["PostgreSQL"] = [pg]
        if rd is not None:
            box.roles["Redis"] = [rd]
        if pg is None or rd is None:
            print("  (PostgreSQL or Redis is not a process here: its CPU is not counted)")
        s = Settings(args.runs, args.repeats, args.workers, peers, db, redis, logs, curator_problem)
        offset = [0]
        for tokens in (int(x) for x in _list(args.tokens)):
            for latency in (float(x) for x in _list(args.latencies)):
                extra = ("--answer-tokens", str(tokens))
                with fake_teacher_process(latency, logs / "fake.log", *extra) as (base_url, fake):
                    box.roles["fake teacher"] = [fake]
                    for mode in modes:
                        case = Case(tokens, latency, mode, args.workers, args.runs)
                        measure(case, base_url, s, box, offset)
                        report(case)
                        cases.append(case)
                    box.roles.pop("fake teacher", None)
    summary(cases)


if __name__ == "__main__":
    main()
