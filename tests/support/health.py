"""Health checks while something else happens: latencies of grpc.health.v1 Check,
probed from a background thread."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass
class HealthLatencies:
    seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.seconds, default=float("inf"))

    def summary(self) -> str:
        if not self.seconds:
            return "no health check answered"
        return (
            f"{len(self.seconds)} health checks: median "
            f"{statistics.median(self.seconds) * 1000:.1f} ms, worst {self.worst * 1000:.1f} ms"
        )


def check_health(address: str, timeout: float = 5.0) -> bool:
    """Whether the server answers SERVING within `timeout`."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def probing_health(address: str, interval_s: float = 0.02) -> Iterator[HealthLatencies]:
    """Checks health every `interval_s` until the block ends; yields the latencies
    measured so far (a connected channel first, so only calls are timed)."""
    result = HealthLatencies()
    stop = threading.Event()
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

        def probe() -> None:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                except grpc.RpcError as exc:
                    result.failures.append(repr(exc))
                else:
                    result.seconds.append(time.perf_counter() - started)
                    if reply.status != health_pb2.HealthCheckResponse.SERVING:
                        result.failures.append(f"status {reply.status}")
                stop.wait(interval_s)

        thread = threading.Thread(target=probe, name="health-probe", daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join(15)
