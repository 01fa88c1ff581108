"""Dataset build throughput and memory: N synthetic completed runs (64 tokens,
top-5 logprobs each) loaded straight into PostgreSQL, then built into a dataset
by the real server and worker (BuildDataset through the shipped client, timed
from the call to READY). In the same run, per size, the baseline: one asyncpg
server-side cursor over the same rows written to one Parquet file with pyarrow
(zstd, jsonb left as text), nothing else. The build also parses, scores,
filters and writes five files. The database is loaded anew for each size.

    python bench/dataset.py [--sizes 50000,200000] [--repeat 1] [--tokens 64] [--top 5]
        [--bytes-tokens 64,256] [--bytes-runs 5000] [--extrapolate 1000000]
        [--parallel 100000]

--parallel N (off by default): also builds N runs in 2 parts (BuildDataset
parts=2) with 1 worker process, then with 2, and reports the speed-up and how
many processes wrote the parts.

First, PostgreSQL bytes per run (pg_total_relation_size of `runs`: heap, TOAST
and indexes, loaded frozen, so no dead tuples) at each of --bytes-tokens, top-5.

Targets (issue 12, part 4): build >= 1.0x the baseline's rows/s at every size,
and a worker peak RSS under 1 GiB at --extrapolate runs (measured when a size
reaches it; else a straight line through the smallest and the largest size,
printed with the build's and the baseline's seconds on the same line), and one
that does not grow with N (within 15% from the smallest size to the largest).
"(CPU)" is the same ratio in CPU seconds (the baseline process against the
worker process, PostgreSQL in neither): steadier than wall time when other jobs
share the cores. The machine is shared by other sessions: expect noise.

The synthetic rows follow the `runs` columns of migrations 0001-0004 (token
texts and logprobs as arrays); a change of that layout needs LOADED and
Synth.row changed with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, free_port, peak_rss_mb, process, wait_port  # noqa: E402

TEMPLATE_ID = "tpl_bench"
USER = "Write a short paragraph about {{ topic }}."
RATIO_TARGET = 1.0
RSS_TARGET_MB = 1024.0
FLAT_RSS = 0.15  # peak RSS growth from the smallest to the largest size that counts as flat
LOAD_CHUNK = 5_000
CURSOR_CHUNK = 1_000

# The columns the build reads (DatasetRepository.completed_runs), in its order.
COLUMNS = (
    "id",
    "batch_id",
    "variables",
    "messages",
    "output_text",
    "finish_reason",
    "token_texts",
    "token_logprobs",
    "top_counts",
    "top_tokens",
    "top_logprobs",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "scores",
)
QUERY = (
    f"SELECT {', '.join(COLUMNS)} FROM runs"
    " WHERE batch_id = $1 AND status = 'completed' ORDER BY id"
)
LOADED = (
    "id",
    "batch_id",
    "status",
    "variables",
    "messages",
    "output_text",
    "finish_reason",
    "has_logprobs",
    *COLUMNS[6:11],
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "scores",
)


def _plain(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


# -- synthetic runs -------------------------------------------------------------------


_TEXT_OID, _INT4_OID, _FLOAT8_OID = 25, 23, 701
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


def _field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def _text_elements(values: Sequence[str]) -> bytes:
    return b"".join(_field(v.encode()) for v in values)


def _float8_elements(values: Sequence[float]) -> bytes:
    return b"".join(struct.pack("!id", 8, v) for v in values)


def _array(oid: int, count: int, elements: bytes) -> bytes:
    """A one-dimensional array in PostgreSQL's binary format, as a COPY field."""
    return _field(struct.pack("!iiiii", 1, 0, oid, count, 1) + elements)


class Synth:
    """Deterministic pseudo-random runs as tuples of PostgreSQL's binary COPY
    format, cheap to generate: each run is a random sequence of blocks of 8
    positions drawn from a pool (a position being a chosen token and its top
    alternatives with decreasing logprobs), each block encoded once."""

    BLOCK = 8

    def __init__(self, seed: int, tokens: int, top: int, blocks: int = 16_384) -> None:
        if tokens % self.BLOCK:
            raise ValueError(f"--tokens must be a multiple of {self.BLOCK}")
        self.rng = random.Random(seed)
        self.tokens = tokens
        self.top = top
        self.top_counts = _array(_INT4_OID, tokens, struct.pack("!ii", 4, top) * tokens)
        syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
        vocab = sorted(
            {
                " " + "".join(self.rng.choices(syllables, k=self.rng.randint(1, 3)))
                for _ in range(12_000)
            }
        )
        # Per block, the encoded array elements of token texts, token logprobs,
        # top tokens and top logprobs; and the block's output text.
        self.blocks: list[tuple[bytes, bytes, bytes, bytes, str]] = []
        for _ in range(blocks):
            texts: list[str] = []
            logprobs: list[float] = []
            top_tokens: list[str] = []
            top_logprobs: list[float] = []
            for _ in range(self.BLOCK):
                alternatives = self.rng.sample(vocab, top)
                alt_logprobs = [-self.rng.expovariate(4.0)]
                for _ in range(top - 1):
                    alt_logprobs.append(alt_logprobs[-1] - self.rng.expovariate(0.7))
                texts.append(alternatives[0])
                logprobs.append(alt_logprobs[0])
                top_tokens.extend(alternatives)
                top_logprobs.extend(alt_logprobs)
            self.blocks.append(
                (
                    _text_elements(texts),
                    _float8_elements(logprobs),
                    _text_elements(top_tokens),
                    _float8_elements(top_logprobs),
                    "".join(texts),
                )
            )

    def row(self, run_id: str, batch_id: str, i: int) -> bytes:
        """One tuple of binary COPY, columns as in LOADED."""
        picked = self.rng.choices(self.blocks, k=self.tokens // self.BLOCK)
        alternatives = self.tokens * self.top
        topic = f"subject {i}"
        variables = json.dumps({"topic": topic})
        messages = json.dumps([{"role": "user", "content": USER.replace("{{ topic }}", topic)}])
        return b"".join(
            (
                struct.pack("!h", len(LOADED)),
                _field(run_id.encode()),
                _field(batch_id.encode()),
                _field(b"completed"),
                _field(b"\x01" + variables.encode()),  # jsonb: a version byte, then text
                _field(b"\x01" + messages.encode()),
                _field("".join(b[4] for b in picked).encode()),
                _field(b"stop"),
                _field(b"\x01"),
                _array(_TEXT_OID, self.tokens, b"".join(b[0] for b in picked)),
                _array(_FLOAT8_OID, self.tokens, b"".join(b[1] for b in picked)),
                self.top_counts,
                _array(_TEXT_OID, alternatives, b"".join(b[2] for b in picked)),
                _array(_FLOAT8_OID, alternatives, b"".join(b[3] for b in picked)),
                _field(struct.pack("!q", 20 + i % 17)),
                _field(struct.pack("!q", self.tokens)),
                _field(struct.pack("!d", 0.0001)),
                _field(struct.pack("!q", 300 + i % 700)),
                _field(b"\x01{}"),
            )
        )


async def runs_bytes(database_url: str) -> int:
    """pg_total_relation_size of `runs`: heap, TOAST and indexes."""
    import asyncpg

    conn = await asyncpg.connect(_plain(database_url))
    try:
        return int(await conn.fetchval("SELECT pg_total_relation_size('runs')"))
    finally:
        await conn.close()


async def load(database_url: str, batch_id: str, n: int, synth: Synth) -> float:
    """Replaces the runs with n completed runs of a new batch; seconds taken.

    Binary COPY of tuples encoded here from pre-encoded blocks (asyncpg's own
    encoding of these arrays, copy_records_to_table, costs ~1 ms of Python per
    run), with FREEZE after a TRUNCATE in the same transaction: the rows are
    written frozen and all-visible, so no reader pays for hint bits."""
    import asyncpg

    async def data() -> AsyncIterator[bytes]:
        yield _COPY_HEADER
        for start in range(0, n, LOAD_CHUNK):
            yield b"".join(
                synth.row(f"run_{batch_id}_{i:09d}", batch_id, i)
                for i in range(start, min(n, start + LOAD_CHUNK))
            )
        yield _COPY_TRAILER

    started = time.perf_counter()
    conn = await asyncpg.connect(_plain(database_url))
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO templates (id, name, version, system_template, user_template,"
                " variables) VALUES ($1, 'bench', 1, '', $2, ARRAY['topic'])"
                " ON CONFLICT DO NOTHING",
                TEMPLATE_ID,
                USER,
            )
            await conn.execute(
                "INSERT INTO batches (id, name, template_id, provider, model, params, labels)"
                " VALUES ($1, $1, $2, 'openai', 'gpt-4o-mini', $3::jsonb, '{}'::jsonb)",
                batch_id,
                TEMPLATE_ID,
                json.dumps({"max_tokens": synth.tokens, "top_logprobs": synth.top}),
            )
            await conn.execute("TRUNCATE runs CASCADE")
            # No autovacuum or autoanalyze may start mid-measurement in this
            # throwaway database (both would rescan the arrays).
            await conn.execute(
                "ALTER TABLE runs SET (autovacuum_enabled = false,"
                " toast.autovacuum_enabled = false)"
            )
            await conn.copy_to_table(
                "runs", source=data(), columns=LOADED, format="binary", freeze=True
            )
        # Statistics for the planner; on the per-token arrays ANALYZE takes seconds.
        await conn.execute("ANALYZE runs (id, batch_id, status)")
    finally:
        await conn.close()
    return time.perf_counter() - started


# -- the baseline ---------------------------------------------------------------------


async def baseline(database_url: str, batch_id: str, out: Path) -> tuple[int, float, float, float]:
    """One cursor, one Parquet file: (rows, seconds, CPU seconds, peak RSS in
    MiB). Run it in a process of its own (`run_baseline`) for an RSS of its own."""
    import asyncpg
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = pa.list_(pa.string())
    doubles = pa.list_(pa.float64())
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("batch_id", pa.string()),
            ("variables", pa.string()),
            ("messages", pa.string()),
            ("output_text", pa.string()),
            ("finish_reason", pa.string()),
            ("token_texts", strings),
            ("token_logprobs", doubles),
            ("top_counts", pa.list_(pa.int32())),
            ("top_tokens", strings),
            ("top_logprobs", doubles),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("latency_ms", pa.int64()),
            ("scores", pa.string()),
        ]
    )
    conn = await asyncpg.connect(_plain(database_url))
    rows = 0
    started, cpu = time.perf_counter(), time.process_time()
    try:
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            async with conn.transaction():
                chunk: list[Any] = []
                async for record in conn.cursor(QUERY, batch_id, prefetch=CURSOR_CHUNK):
                    chunk.append(record)
                    if len(chunk) == CURSOR_CHUNK:
                        writer.write_table(_table(chunk, schema))
                        rows += len(chunk)
                        chunk = []
                if chunk:
                    writer.write_table(_table(chunk, schema))
                    rows += len(chunk)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await conn.close()
    return rows, elapsed, cpu, peak_rss_mb(os.getpid())


def run_baseline(database_url: str, batch_id: str, out: Path) -> tuple[int, float, float, float]:
    return asyncio.run(baseline(database_url, batch_id, out))


def _table(records: Sequence[Any], schema: Any) -> Any:
    import pyarrow as pa

    columns = list(zip(*records, strict=True))
    return pa.Table.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


# -- the real thing -------------------------------------------------------------------


async def build(
    address: str, batch_id: str, version: str, parts: int = 1
) -> tuple[int, float, str]:
    """BuildDataset through the shipped client, timed from the call to READY;
    (runs read, seconds, dataset id)."""
    from nex.collector.client import AsyncClient, DatasetStatus, LengthFilter

    async with AsyncClient.connect(address, token="bench") as client:
        started = time.perf_counter()
        manifest = await client.build_dataset(
            "bench", version, [batch_id], filters=[LengthFilter(min_chars=1)], parts=parts
        )
        ready = await client.wait_dataset(manifest.id, timeout=3600, poll_interval=0.1)
        elapsed = time.perf_counter() - started
    assert ready.status == DatasetStatus.READY, ready.error
    return ready.counts.total, elapsed, ready.id


async def part_writers(database_url: str, dataset_id: str) -> list[str]:
    """The worker that wrote each part of a build in parts."""
    import asyncpg

    conn = await asyncpg.connect(_plain(database_url))
    try:
        rows = await conn.fetch(
            "SELECT worker_id FROM dataset_parts WHERE dataset_id = $1 ORDER BY part", dataset_id
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


def measure_parallel(
    size: int, synth: Synth, database_url: str, env: dict[str, str], worker: list[str]
) -> float:
    """A build of `size` runs in 2 parts by 1 worker process, then by 2; prints
    both and returns the speed-up (seconds with 1 / seconds with 2)."""
    batch_id = "bat_benchparts"
    asyncio.run(load(database_url, batch_id, size, synth))
    data = Path(env["DATA_DIR"])
    seconds: dict[int, float] = {}
    for workers in (1, 2):
        version = f"parts-{size}-w{workers}"
        with contextlib.ExitStack() as stack:
            for i in range(workers):
                log = data.parent / f"worker-{version}-{i}.log"
                proc = stack.enter_context(process(worker, env, log))
                wait_ready(log, proc)
            total, seconds[workers], dataset_id = asyncio.run(
                build(env["NEX_COLLECTOR_ADDR"], batch_id, version, parts=2)
            )
        assert total == size, (total, size)
        writers = asyncio.run(part_writers(database_url, dataset_id))
        print(
            f"{size:>9,} runs in 2 parts, {workers} worker process{'es' if workers > 1 else ''}:"
            f" {size / seconds[workers]:>9,.0f} rows/s ({seconds[workers]:.1f} s);"
            f" parts written by {len(set(writers))} process{'es' if len(set(writers)) > 1 else ''}",
            flush=True,
        )
        shutil.rmtree(data / "bench" / version, ignore_errors=True)
    speedup = seconds[1] / seconds[2]
    print(f"parallel build: {speedup:.2f}x faster with 2 worker processes than with 1 (parts=2)")
    return speedup


@dataclass(frozen=True)
class Figures:
    size: int
    load_s: float
    baseline_rps: float
    baseline_cpu_s: float
    baseline_rss_mb: float
    build_rps: float
    build_cpu_s: float
    build_rss_mb: float
    idle_rss_mb: float
    pg_bytes_per_run: float

    HEADER: ClassVar[str] = (
        "     runs   baseline      build  ratio  (CPU)   build peak RSS   baseline peak RSS"
        "   (rows/s, MiB)"
    )

    @property
    def ratio(self) -> float:
        return self.build_rps / self.baseline_rps

    def line(self) -> str:
        return (
            f"{self.size:>9,}  {self.baseline_rps:>9,.0f}  {self.build_rps:>9,.0f}"
            f"  {self.ratio:>4.2f}x  {self.baseline_cpu_s / self.build_cpu_s:>4.2f}x"
            f"  {self.build_rss_mb:>15,.0f}  {self.baseline_rss_mb:>18,.0f}"
            f"   (worker idle at {self.idle_rss_mb:.0f} MiB; loaded in {self.load_s:.0f} s;"
            f" PostgreSQL {self.pg_bytes_per_run:,.0f} bytes/run)"
        )


@contextlib.contextmanager
def collector(env: dict[str, str], logs: Path) -> Iterator[list[str]]:
    """The real server (migrated); yields the command line that starts a worker."""
    cli = [sys.executable, "-m", "nex.collector.server.cli"]
    with process([*cli, "serve", "--migrate"], env, logs / "server.log"):
        wait_port(int(env["NEX_COLLECTOR_ADDR"].rsplit(":", 1)[1]))
        yield [*cli, "worker"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, all its threads."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until the worker logs that it is ready (its imports take seconds)."""
    deadline = time.monotonic() + timeout
    while b"nex-collector ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; see {log}")
        time.sleep(0.1)
    time.sleep(0.5)  # its first poll of the queue


def measure(
    size: int,
    index: int,
    repeat: int,
    synth: Synth,
    database_url: str,
    env: dict[str, str],
    worker: list[str],
) -> Figures:
    """Loads the runs, then `repeat` times: the baseline, then a build by a fresh
    worker (so that its peak RSS is this build's). Best rows/s, highest RSS."""
    batch_id = f"bat_bench{index}"
    load_s = asyncio.run(load(database_url, batch_id, size, synth))
    pg_bytes = asyncio.run(runs_bytes(database_url)) / size
    data = Path(env["DATA_DIR"])
    base_s, base_cpu, base_rss = math.inf, math.inf, 0.0
    build_s, build_cpu, idle, peak = math.inf, math.inf, 0.0, 0.0
    spawn = multiprocessing.get_context("spawn")
    for attempt in range(repeat):
        out = data / f"baseline-{size}.parquet"
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            rows, seconds, cpu, rss = pool.submit(
                run_baseline, database_url, batch_id, out
            ).result()
        out.unlink()
        assert rows == size, (rows, size)
        base_s, base_cpu, base_rss = min(base_s, seconds), min(base_cpu, cpu), max(base_rss, rss)
        version = f"n{size}-{attempt}"
        log = data.parent / f"worker-{version}.log"
        with process(worker, env, log) as proc:
            wait_ready(log, proc)
            idle = max(idle, peak_rss_mb(proc.pid))
            cpu = cpu_seconds(proc.pid)
            total, seconds, _ = asyncio.run(build(env["NEX_COLLECTOR_ADDR"], batch_id, version))
            cpu = cpu_seconds(proc.pid) - cpu
            peak = max(peak, peak_rss_mb(proc.pid))
        assert total == size, (total, size)
        build_s, build_cpu = min(build_s, seconds), min(build_cpu, cpu)
        shutil.rmtree(data / "bench" / version, ignore_errors=True)
    return Figures(
        size,
        load_s,
        size / base_s,
        base_cpu,
        base_rss,
        size / build_s,
        build_cpu,
        peak,
        idle,
        pg_bytes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="200000", help="comma-separated numbers of runs")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per run")
    parser.add_argument("--top", type=int, default=5, help="top alternatives per token")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many measurements")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--bytes-tokens", default="64,256", help="answer lengths to report PostgreSQL bytes/run at"
    )
    parser.add_argument("--bytes-runs", type=int, default=5000, help="runs loaded for that")
    parser.add_argument(
        "--extrapolate", type=int, default=1_000_000, help="runs to extrapolate RSS and time to"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        metavar="N",
        help="also time a build of N runs in 2 parts with 1 and with 2 worker processes",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    bytes_tokens = [int(x) for x in args.bytes_tokens.split(",") if x.strip()]
    synth = Synth(args.seed, args.tokens, args.top)
    results = []
    print(
        f"runs of {args.tokens} tokens with top-{args.top} logprobs; baseline: one asyncpg"
        f" cursor -> one Parquet file; best of {args.repeat}. The machine is shared: expect noise."
    )
    with (
        tempfile.TemporaryDirectory(prefix="nexc-bench-dataset-") as tmp,
        backing() as (database_url, redis_url),
    ):
        port = free_port()
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(Path(tmp) / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "LOG_LEVEL": "WARNING",
        }
        Path(env["DATA_DIR"]).mkdir()
        with collector(env, Path(tmp)) as worker:
            for tokens in bytes_tokens:
                print(storage_line(database_url, tokens, args.top, args.bytes_runs, args.seed))
            print(Figures.HEADER)
            for index, size in enumerate(sizes):
                f = measure(size, index, args.repeat, synth, database_url, env, worker)
                results.append(f)
                print(f.line(), flush=True)
            if args.parallel:
                measure_parallel(args.parallel, synth, database_url, env, worker)
    speed_met = all(f.ratio >= RATIO_TARGET for f in results)
    print(
        f"speed: build >= {RATIO_TARGET}x the baseline at every size: "
        + ("met" if speed_met else "NOT met")
    )
    if len(results) > 1:
        small, large = min(results, key=lambda f: f.size), max(results, key=lambda f: f.size)
        growth = large.build_rss_mb / small.build_rss_mb - 1
        flat = growth <= FLAT_RSS
        print(
            f"memory: build peak RSS {growth:+.0%} from {small.size:,} to {large.size:,} runs"
            f" (flat: <= {FLAT_RSS:+.0%}): " + ("met" if flat else "NOT met")
        )
    print(at_scale(results, args.extrapolate))


def storage_line(database_url: str, tokens: int, top: int, n: int, seed: int) -> str:
    """PostgreSQL bytes per run and per token of n synthetic runs of this length."""
    synth = Synth(seed, tokens, top, blocks=2048)
    asyncio.run(load(database_url, f"bat_bytes{tokens}", n, synth))
    size = asyncio.run(runs_bytes(database_url))
    return (
        f"PostgreSQL, {tokens} tokens with top-{top}: {size / n:,.0f} bytes/run,"
        f" {size / n / tokens:.0f} bytes/output token ({n:,} runs, `runs` with TOAST and indexes)"
    )


def _line(points: list[tuple[int, float]], at: int) -> float:
    """y at `at` on the straight line through the first and the last point."""
    (n1, y1), (n2, y2) = points[0], points[-1]
    if n1 == n2:
        return y1 * at / n1
    return y1 + (y2 - y1) * (at - n1) / (n2 - n1)


def at_scale(results: list[Figures], at: int) -> str:
    """The build's peak RSS and both sides' seconds at `at` runs: measured when a
    size reached it, else extrapolated; and whether RSS stays under the target."""
    results = sorted(results, key=lambda f: f.size)
    reached = [f for f in results if f.size >= at]
    if reached:
        f = reached[0]
        rss, build_s, base_s, how = (
            f.build_rss_mb,
            f.size / f.build_rps,
            f.size / f.baseline_rps,
            (f"measured at {f.size:,}"),
        )
    elif len(results) >= 2:
        # A line that falls (noise) would promise less than was already seen.
        rss = max(_line([(f.size, f.build_rss_mb) for f in results], at), results[-1].build_rss_mb)
        build_s = _line([(f.size, f.size / f.build_rps) for f in results], at)
        base_s = _line([(f.size, f.size / f.baseline_rps) for f in results], at)
        how = f"extrapolated from {results[0].size:,} and {results[-1].size:,}"
    else:
        return f"at {at:,} runs: two sizes are needed to extrapolate RSS (--sizes A,B)"
    verdict = "met" if rss < RSS_TARGET_MB else "NOT met"
    return (
        f"at {at:,} runs ({how}): build peak RSS {rss:,.0f} MiB (target < {RSS_TARGET_MB:,.0f}):"
        f" {verdict}; build {build_s:,.0f} s ({at / build_s:,.0f} rows/s), baseline"
        f" {base_s:,.0f} s ({at / base_s:,.0f} rows/s), ratio {base_s / build_s:.2f}x"
    )


if __name__ == "__main__":
    main()
