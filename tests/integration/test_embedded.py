"""The embedded PostgreSQL and Redis shared by several processes on one data dir:
none stops a service another process still uses, and nothing is left outside
the data dir."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nex.collector.server.embedded import EmbeddedRedis, start_embedded
from nex.collector.server.testing import CollectorEnvironment
from tests.support.backing import Backing
from tests.support.collector import collector_settings

NEX_COLLECTOR = Path(sys.executable).parent / "nex-collector"


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def _our_temp_folders() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("nexc-redis-")}


@pytest.mark.timeout(180)
def test_a_second_process_on_the_data_dir_leaves_the_first_ones_redis_running(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    first = start_embedded(data_dir)
    try:
        assert _ping(first.redis_url)
        # What the README says to run beside `make dev`.
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        done = subprocess.run(
            [str(NEX_COLLECTOR), "migrate", "--data-dir", str(data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert _ping(first.redis_url), "the second process stopped the first one's Redis"
        # Everything the embedded Redis keeps is in the data dir.
        redis_dir = data_dir / "redis"
        assert {"redis.conf", "redis.log", "redis.pid"} <= {p.name for p in redis_dir.iterdir()}
        assert first.redis_url == f"unix://{redis_dir / 'redis.sock'}"
    finally:
        first.stop()
    assert not _ping(first.redis_url), "the last user did not stop Redis"


def test_a_socket_path_too_long_for_unix_goes_to_a_temp_folder_removed_on_stop(
    tmp_path: Path,
) -> None:
    before = _our_temp_folders()
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    r = EmbeddedRedis(deep / "redis")
    r.join()
    try:
        assert _ping(r.url)
        assert len(_our_temp_folders() - before) == 1
        # A second user finds the same socket.
        other = EmbeddedRedis(deep / "redis")
        assert other.url == r.url
    finally:
        r.leave()
    assert not _ping(r.url)
    assert _our_temp_folders() == before, "a temporary folder was left behind"


def test_a_killed_user_does_not_keep_redis_alive_forever(tmp_path: Path) -> None:
    root = tmp_path / "redis"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from nex.collector.server.embedded import EmbeddedRedis\n"
        "EmbeddedRedis(Path(sys.argv[1])).join()\n"
        "print('joined', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "joined"
        ours = EmbeddedRedis(root)
        ours.join()
        child.kill()
        child.wait(10)
        ours.leave()  # the killed process no longer counts as a user
        assert not _ping(ours.url)
    finally:
        child.kill()


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def _wait_health(address: str, want: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while (status := _health(address)) != want:
        assert time.monotonic() < deadline, f"health stayed {status}, wanted {want}"
        time.sleep(0.2)


def test_health_is_not_serving_while_redis_is_unreachable(
    backing: Backing, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own = EmbeddedRedis(tmp_path / "redis")
    own.join()
    settings = collector_settings(backing, tmp_path / "data", REDIS_URL=own.url)
    try:
        with CollectorEnvironment(settings, work=False) as collector:
            assert _health(collector.address) == health_pb2.HealthCheckResponse.SERVING
            own.leave()  # Redis goes away under the running server
            _wait_health(collector.address, health_pb2.HealthCheckResponse.NOT_SERVING)
            assert "cannot reach Redis" in caplog.text
            own.join()
            _wait_health(collector.address, health_pb2.HealthCheckResponse.SERVING)
    finally:
        own.leave()
