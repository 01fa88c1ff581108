"""What follow watchers cost: one batch of N runs through `nex-collector serve` and
`nex-collector worker` (separate processes) against the fake OpenAI server, with
W watchers following the batch from another process, for each W in --watchers.

For each W it prints:
- pace: runs per second from the first submit to the last event committed,
  and its ratio to the first W (one watcher);
- server CPU (the `serve` process only) per extra event delivered: its CPU time
  over the batch, minus the first W's, over the extra events sent;
- commit -> delivery latency (p50, p99) over every event every watcher got,
  from its commit (seen by a LISTEN of the bench's own, see `Commits`) to
  when the watcher read it;
- whether every watcher got every event of the batch in order exactly once
  (checked against the stored log).

    python bench/watch.py [--runs 2000] [--watchers 1,200,1000] [--latency-ms 0]
                          [--repeats 1] [--client lean|shipped]

The watchers run in one process of their own. By default (`--client lean`)
they ask for batches and read the messages' fields directly, resuming by
revision on ABORTED/UNAVAILABLE like the shipped client: the Python client's
own cost per event (building a RunEvent dataclass, ~10-25 us) would otherwise
dominate a 2-core box at 1,000 watchers. `--client shipped` uses
`AsyncClient.watch_batch(..., follow=True)`. Everything (server, worker,
PostgreSQL, the watchers) shares the machine's cores, so read the ratios.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import bisect
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench._support import backing, fake_teacher, free_port, process, wait_port  # noqa: E402

KEY = "sk-bench"
TOKEN = "bench"
USER = "Write a short paragraph about {{ topic }}."
# Latency histogram upper bounds, seconds (log-spaced, 1 ms .. ~18 min).
BOUNDS = [0.001 * 1.25**i for i in range(60)]
MOD = (1 << 61) - 1
LEAK = "Task was destroyed but it is pending"
Row = dict[str, Any]


def _fold(h: int, revision: int) -> int:
    return (h * 1_000_003 + revision) % MOD


# ------------------------------------------------------------------ the crowd


async def _crowd(
    address: str, batch_id: str, watchers: int, runs: int, client: str
) -> tuple[list[tuple[int, int, bool]], list[array.array[float]]]:
    """W watchers of one batch; prints `ready` once each has its first event;
    returns once each has seen `runs` COMPLETED events: per watcher, (events,
    fold of revisions, in order) and when it got each event."""
    results: list[tuple[int, int, bool]] = []
    received: list[array.array[float]] = []
    started = 0

    class Watcher:
        def __init__(self) -> None:
            self.n = self.h = self.last = self.completed = 0
            self.ordered = True
            self.times = array.array("d")

        def saw(self, revision: int, completed: bool) -> bool:
            """Records one event; True once the batch is complete."""
            nonlocal started
            self.times.append(time.time())
            if self.n == 0:
                started += 1
                if started == watchers:
                    print("ready", flush=True)
            self.ordered = self.ordered and revision > self.last
            self.last = revision
            self.n += 1
            self.h = _fold(self.h, revision)
            self.completed += completed
            return self.completed == runs

    async def shipped() -> None:
        from nex.collector.client import AsyncClient, RunStatus

        async with AsyncClient.connect(address, token=TOKEN) as c:

            async def one() -> None:
                w = Watcher()
                async for e in c.watch_batch(batch_id, follow=True):
                    if w.saw(e.revision, e.status == RunStatus.COMPLETED):
                        break
                results.append((w.n, w.h, w.ordered))
                received.append(w.times)

            await asyncio.gather(*(one() for _ in range(watchers)))

    async def lean() -> None:
        """Reads the messages without building the client's RunEvent objects
        (what a compiled client would cost), resuming like the shipped one."""
        import grpc

        from nex.collector.v1 import teacher_pb2
        from nex.collector.v1 import teacher_service_pb2 as pb
        from nex.collector.v1 import teacher_service_pb2_grpc as pb_grpc

        completed = teacher_pb2.RUN_STATUS_COMPLETED
        metadata = (("authorization", f"Bearer {TOKEN}"),)
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(address, options=options) as channel:
            stub = pb_grpc.TeacherServiceStub(channel)

            async def one() -> None:
                w = Watcher()
                done = False
                while not done:
                    request = pb.WatchRunsRequest(
                        batch_id=batch_id,
                        after_revision=w.last,
                        follow=True,
                        max_events_per_message=1000,
                    )
                    try:
                        async for msg in stub.WatchRuns(request, metadata=metadata):
                            kind = msg.WhichOneof("kind")
                            events = (
                                (msg.event,)
                                if kind == "event"
                                else msg.events.events
                                if kind == "events"
                                else ()
                            )
                            for e in events:
                                if e.revision > w.last and w.saw(e.revision, e.status == completed):
                                    done = True
                                    break
                            if done:
                                break
                    except grpc.aio.AioRpcError as err:
                        if err.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                            raise
                        print(f"resuming after {err.code().name}", file=sys.stderr, flush=True)
                results.append((w.n, w.h, w.ordered))
                received.append(w.times)

            await asyncio.gather(*(one() for _ in range(watchers)))

    await (shipped() if client == "shipped" else lean())
    return results, received


# ------------------------------------------------------------------ the driver


def _quantile(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return float("nan")
    rank, seen = q * total, 0
    for i, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return BOUNDS[i] if i < len(BOUNDS) else float("inf")
    return float("inf")


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _stored(database_url: str, batch_id: str) -> tuple[list[int], int]:
    """The batch's stored log: its revisions, and their fold."""
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT revision FROM run_events WHERE batch_id = $1 ORDER BY revision",
            batch_id,
        )
    finally:
        await conn.close()
    h = 0
    for r in rows:
        h = _fold(h, r["revision"])
    return [r["revision"] for r in rows], h


async def _new_batch(address: str) -> str:
    from nex.collector.client import AsyncClient, GenerationParams

    async with AsyncClient.connect(address, token=TOKEN) as client:
        template = await client.create_template(
            f"watch-{time.time_ns()}", user_template=USER, variables=["topic"]
        )
        batch = await client.create_batch(
            "watch-bench",
            template.id,
            "openai",
            "gpt-4o-mini",
            params=GenerationParams(top_logprobs=5, max_tokens=64),
        )
        await client.create_runs(batch.id, [{"topic": "subject 0"}])  # the crowd's first event
        return batch.id


async def _create_rest(address: str, batch_id: str, runs: int) -> None:
    from nex.collector.client import AsyncClient

    async with AsyncClient.connect(address, token=TOKEN) as client:
        for i in range(1, runs, 1000):
            chunk = [{"topic": f"subject {j}"} for j in range(i, min(runs, i + 1000))]
            await client.create_runs(batch_id, chunk)


class Commits:
    """When events were committed, as seen from outside: a LISTEN on the
    collector's notification channel (sent at commit), each notification paired
    with the batch's largest revision read right after it. An event's commit
    time is that of the first notification whose revision covers it (a few ms
    early at worst, so latencies err on the long side)."""

    def __init__(self, database_url: str, batch_id: str) -> None:
        self._dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
        self._batch = batch_id
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Commits:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _run(self) -> None:
        import asyncpg

        listener = await asyncpg.connect(self._dsn)
        reader = await asyncpg.connect(self._dsn)
        pending: asyncio.Queue[float] = asyncio.Queue()

        def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload == self._batch:
                pending.put_nowait(time.time())

        await listener.add_listener("nex_run_events", notified)
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    at = await asyncio.wait_for(pending.get(), 0.2)
                except TimeoutError:
                    continue
                while not pending.empty():  # a burst: the first time, the last revision
                    pending.get_nowait()
                top = await reader.fetchval(
                    "SELECT max(revision) FROM run_events WHERE batch_id = $1", self._batch
                )
                self.seen.append((at, int(top or 0)))
        finally:
            await listener.close()
            await reader.close()

    def committed(self, revisions: list[int]) -> list[float]:
        """Commit time per revision (nan: before the LISTEN began)."""
        tops = [top for _, top in self.seen]
        out = []
        for r in revisions:
            i = bisect.bisect_left(tops, r)
            out.append(self.seen[i][0] if i < len(tops) else float("nan"))
        return out


def measure(
    address: str,
    server: int,
    worker: int,
    database_url: str,
    runs: int,
    watchers: int,
    client: str,
    logs: Path,
) -> Row:
    batch_id = asyncio.run(_new_batch(address))
    with (logs / "crowd.log").open("ab") as err:
        crowd = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--crowd",
                address,
                batch_id,
                str(watchers),
                str(runs),
                client,
                str(logs / "times.bin"),
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
        )
    assert crowd.stdout is not None
    try:
        line = crowd.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"the watchers did not start (see {logs / 'crowd.log'})")
        with Commits(database_url, batch_id) as commits:
            cpu0, wcpu0, ccpu0 = _cpu(server), _cpu(worker), _cpu(crowd.pid)
            started = time.time()
            asyncio.run(_create_rest(address, batch_id, runs))
            report = json.loads(crowd.stdout.readline())
            delivered_at = time.time()
        cpu, wcpu, ccpu = (
            _cpu(server) - cpu0,
            _cpu(worker) - wcpu0,
            _cpu(crowd.pid) - ccpu0,
        )
        crowd.wait(60)
    finally:
        if crowd.poll() is None:
            crowd.kill()
    revisions, fold = asyncio.run(_stored(database_url, batch_id))
    events = len(revisions)
    exact = all(n == events and h == fold and ok for n, h, ok in report["results"])
    exact = exact and len(report["results"]) == watchers
    committed = commits.committed(revisions)
    hist = [0] * (len(BOUNDS) + 1)
    times = array.array("d")
    with (logs / "times.bin").open("rb") as f:
        times.frombytes(f.read())
    if exact:  # every watcher got the log itself: position i is revision i
        for w in range(watchers):
            for i in range(events):
                if committed[i] >= started:  # not the first run's, before the LISTEN
                    hist[bisect.bisect_left(BOUNDS, times[w * events + i] - committed[i])] += 1
    return {
        "pace": runs / (committed[-1] - started),
        "server_cpu": cpu,
        "worker_cpu": wcpu,
        "crowd_cpu": ccpu,
        "events": events,
        "p50": _quantile(hist, 0.5),
        "p99": _quantile(hist, 0.99),
        "exact": exact,
        "all_delivered_s": delivered_at - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--watchers", default="1,200,1000", help="the first is the baseline")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--client",
        choices=("lean", "shipped"),
        default="lean",
        help="lean: the watchers read the messages' fields directly (the server's cost, "
        "without the Python client's per-event objects); shipped: AsyncClient.watch_batch",
    )
    parser.add_argument("--crowd", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.crowd:
        address, batch_id, watchers, runs, client, times_file = args.crowd
        results, received = asyncio.run(_crowd(address, batch_id, int(watchers), int(runs), client))
        with open(times_file, "wb") as out:  # doubles, watcher after watcher
            for times in received:
                times.tofile(out)
        print(json.dumps({"results": results}), flush=True)
        return
    counts = [int(x) for x in args.watchers.split(",")]
    with (
        tempfile.TemporaryDirectory(prefix="nexc-bench-logs-") as tmp,
        backing() as (db, redis),
        fake_teacher(args.latency_ms, Path(tmp) / "fake.log") as base_url,
    ):
        logs = Path(tmp)
        port = free_port()
        env = {
            "DATABASE_URL": db,
            "REDIS_URL": redis,
            "DATA_DIR": str(logs / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{port}",
            "NEX_COLLECTOR_TOKENS": TOKEN,
            "OPENAI_BASE_URL": f"{base_url}/v1",
            "OPENAI_API_KEY": KEY,
            "LOG_LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "nex.collector.server.cli"]
        address = f"127.0.0.1:{port}"
        rows = []
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(
                process([*cli, "serve", "--migrate"], env, logs / "server.log")
            )
            wait_port(port)
            worker = stack.enter_context(process([*cli, "worker"], env, logs / "worker.log"))
            time.sleep(1.0)
            measure(address, server.pid, worker.pid, db, 50, 1, args.client, logs)  # warm up
            # The counts in turn, `repeats` times: the machine's noise hits them alike.
            for _ in range(args.repeats):
                for w in counts:
                    row = measure(
                        address, server.pid, worker.pid, db, args.runs, w, args.client, logs
                    )
                    rows.append((w, row))
                    _print(args.runs, w, row, rows[0][1])
        leaks = sum(
            (logs / name).read_text(errors="replace").count(LEAK)
            for name in ("server.log", "crowd.log")
        )
    medians = [(w, _median([r for c, r in rows if c == w])) for w in counts]
    if args.repeats > 1:
        print("medians:")
        for w, row in medians:
            _print(args.runs, w, row, medians[0][1])
    print(f"'{LEAK}' logged {leaks} times (server and watchers)")
    _verdict(medians)


def _median(rows: list[Row]) -> Row:
    out: Row = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
    out["exact"] = all(r["exact"] for r in rows)
    out["events"] = rows[0]["events"]
    return out


def _print(runs: int, w: int, row: Row, base: Row) -> None:
    extra = (w - 1) * int(row["events"])
    per_event = (
        f"{(float(row['server_cpu']) - float(base['server_cpu'])) / extra * 1e6:6.1f} us"
        if extra > 0
        else "     -   "
    )
    print(
        f"N={runs} watchers {w:5d}  pace {row['pace']:6.1f} runs/s "
        f"({float(row['pace']) / float(base['pace']):4.2f}x)  "
        f"server CPU {row['server_cpu']:6.2f} s, {per_event} per extra event delivered  "
        f"commit->delivery p50 {row['p50'] * 1000:7.0f} ms p99 {row['p99'] * 1000:7.0f} ms  "
        f"all delivered {row['all_delivered_s']:6.1f} s  "
        f"every event once, in order: {'yes' if row['exact'] else 'NO'}  "
        f"(worker CPU {row['worker_cpu']:.1f} s, watchers' client CPU {row['crowd_cpu']:.1f} s)",
        flush=True,
    )


def _verdict(rows: list[tuple[int, Row]]) -> None:
    base = rows[0][1]
    ok = True
    for w, row in rows[1:]:
        extra = (w - 1) * int(row["events"])
        cpu = (float(row["server_cpu"]) - float(base["server_cpu"])) / extra * 1e6
        ok = ok and float(row["pace"]) / float(base["pace"]) >= 0.8 and cpu <= 20
        if w <= 200:
            ok = ok and float(row["p99"]) < 2.0
    ok = ok and all(row["exact"] for _, row in rows)
    print(
        "targets (pace >= 0.8x one watcher, <= 20 us server CPU per extra event, "
        f"p99 < 2 s up to 200 watchers, every event once in order): {'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
