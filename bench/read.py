"""ReadDataset throughput and memory: N synthetic completed runs (64 tokens,
top-5 logprobs each) loaded into PostgreSQL and built into a dataset by the
real server and worker, then each file streamed through ReadDataset by the
shipped client (record batches counted, never gathered), against a direct
pyarrow read of the same Parquet file (``ParquetFile.iter_batches``) in the
same run. The server's peak RSS is reported after each size: streaming holds
one row group, so it must not grow with N.

    python bench/read.py [--sizes 20000,100000] [--files teacher,targets] [--repeat 2]

Printed per size and file: rows/s through gRPC, rows/s of the direct read and
their ratio; then the server's peak RSS (VmHWM) after streaming that size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._support import backing, free_port, peak_rss_mb, process, wait_port  # noqa: E402
from bench.dataset import Synth, build, load, wait_ready  # noqa: E402

FLAT_RSS = 0.15  # server peak RSS growth from the smallest to the largest size that is flat


async def stream(address: str, dataset_id: str, file: str) -> tuple[int, float, int]:
    """(rows, seconds, bytes of Arrow data) of one ReadDataset of `file`."""
    from nex.collector.client import AsyncClient

    async with AsyncClient.connect(address, token="bench") as client:
        rows = size = 0
        started = time.perf_counter()
        async for batch in client.iter_dataset_batches(dataset_id, file=file):
            rows += batch.num_rows
            size += batch.nbytes
        return rows, time.perf_counter() - started, size


def direct(path: Path) -> tuple[int, float]:
    """(rows, seconds) of pyarrow reading the same file batch by batch."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    rows = sum(b.num_rows for b in pq.ParquetFile(path).iter_batches(use_threads=False))
    return rows, time.perf_counter() - started


async def dataset_of(address: str, batch_id: str, version: str) -> tuple[str, str]:
    from nex.collector.client import AsyncClient

    await build(address, batch_id, version)
    async with AsyncClient.connect(address, token="bench") as client:
        async for d in client.list_datasets("bench"):
            if d.version == version:
                return d.id, d.uri
    raise RuntimeError(f"no dataset bench {version}")


@contextlib.contextmanager
def server(env: dict[str, str], logs: Path) -> Iterator[tuple[int, list[str]]]:
    """The real server (migrated); yields its pid and the command of a worker."""
    cli = [sys.executable, "-m", "nex.collector.server.cli"]
    with process([*cli, "serve", "--migrate"], env, logs / "server.log") as proc:
        wait_port(int(env["NEX_COLLECTOR_ADDR"].rsplit(":", 1)[1]))
        yield proc.pid, [*cli, "worker"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated numbers of runs")
    parser.add_argument("--files", default="teacher,targets", help="files to stream")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many reads")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    files = args.files.split(",")
    synth = Synth(7, args.tokens, args.top)
    rss: list[tuple[int, float]] = []
    print(f"runs of {args.tokens} tokens with top-{args.top} logprobs; best of {args.repeat}")
    print("     runs  file          rows/s gRPC  rows/s pyarrow  ratio   MiB/s gRPC")
    with (
        tempfile.TemporaryDirectory(prefix="nexc-bench-read-") as tmp,
        backing() as (database_url, redis_url),
    ):
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DATA_DIR": str(Path(tmp) / "data"),
            "NEX_COLLECTOR_ADDR": f"127.0.0.1:{free_port()}",
            "NEX_COLLECTOR_TOKENS": "bench",
            "LOG_LEVEL": "WARNING",
        }
        Path(env["DATA_DIR"]).mkdir()
        address = env["NEX_COLLECTOR_ADDR"]
        with server(env, Path(tmp)) as (server_pid, worker):
            idle = peak_rss_mb(server_pid)
            for index, size in enumerate(sizes):
                batch_id = f"bat_read{index}"
                asyncio.run(load(database_url, batch_id, size, synth))
                log = Path(tmp) / f"worker-{index}.log"
                with process(worker, env, log) as proc:
                    wait_ready(log, proc)
                    dataset_id, uri = asyncio.run(dataset_of(address, batch_id, f"r{size}"))
                folder = Path(urlparse(uri).path)
                for file in files:
                    best_grpc = best_direct = float("inf")
                    volume = 0
                    for _ in range(args.repeat):
                        rows, seconds, volume = asyncio.run(stream(address, dataset_id, file))
                        assert rows == size, (rows, size)
                        best_grpc = min(best_grpc, seconds)
                        rows, seconds = direct(folder / f"{file}.parquet")
                        best_direct = min(best_direct, seconds)
                    print(
                        f"{size:>9,}  {file:<10}  {size / best_grpc:>13,.0f}"
                        f"  {size / best_direct:>14,.0f}  {best_direct / best_grpc:>4.2f}x"
                        f"  {volume / best_grpc / 2**20:>11,.0f}",
                        flush=True,
                    )
                rss.append((size, peak_rss_mb(server_pid)))
                print(f"           server peak RSS after {size:,} runs: {rss[-1][1]:,.0f} MiB")
    print(f"server RSS idle: {idle:,.0f} MiB")
    if len(rss) > 1:
        (small, low), (large, high) = rss[0], rss[-1]
        growth = high / low - 1
        print(
            f"memory: server peak RSS {growth:+.0%} from {small:,} to {large:,} runs"
            f" (flat: <= {FLAT_RSS:+.0%}): " + ("met" if growth <= FLAT_RSS else "NOT met")
        )


if __name__ == "__main__":
    main()
