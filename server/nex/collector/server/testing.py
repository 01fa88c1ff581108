"""A whole collector inside your own tests: the gRPC server and a worker on an
event loop of their own in a background thread, so blocking and async clients
alike can call it.

::

    from nex.collector.server.testing import CollectorEnvironment

    with CollectorEnvironment() as env, env.client() as client:
        ...  # templates, batches on the offline "mock" teacher, datasets

    async with CollectorEnvironment() as env, env.async_client() as client:
        ...

With no settings it runs on embedded PostgreSQL and Redis in a temporary folder
(removed at the end), or on the servers DATABASE_URL / REDIS_URL name when they
are set. ``make_settings`` builds settings of your own: another database, real
or fake teachers (``OPENAI_BASE_URL=…``), any other setting by its environment
name.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nex.collector.server.config import Settings, load_settings

if TYPE_CHECKING:
    from nex.collector.client import Client, Connecting
    from nex.collector.server.api.server import GrpcServer
    from nex.collector.server.bootstrap import Container

__all__ = [
    "DEFAULT_TOKEN",
    "CollectorEnvironment",
    "CollectorStartError",
    "make_settings",
]

DEFAULT_TOKEN = "test-token"
START_TIMEOUT_S = 180.0  # a first embedded PostgreSQL takes a few seconds, a busy CI box more
STOP_TIMEOUT_S = 60.0

T = TypeVar("T")


class CollectorStartError(RuntimeError):
    """The collector did not start; the message says why (the cause is chained)."""


def make_settings(
    data_dir: Path | str,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    token: str | None = DEFAULT_TOKEN,
    **overrides: object,
) -> Settings:
    """Settings for a collector in a test: listening on a free loopback port,
    its files (and embedded databases) in ``data_dir``.

    ``database_url`` / ``redis_url``: the servers to use; unset, the
    environment's DATABASE_URL / REDIS_URL, else embedded ones. ``token``: the
    one bearer token accepted (None: NEX_COLLECTOR_TOKENS from the environment).
    ``overrides``: any other setting by its environment name, e.g.
    ``OPENAI_BASE_URL="http://127.0.0.1:8080/v1", OPENAI_API_KEY="sk-…"`` for a
    teacher of your own; they win over everything above."""
    values: dict[str, object] = {"DATA_DIR": Path(data_dir), "NEX_COLLECTOR_ADDR": "127.0.0.1:0"}
    if database_url is not None:
        values["DATABASE_URL"] = database_url
    if redis_url is not None:
        values["REDIS_URL"] = redis_url
    if token is not None:
        values["NEX_COLLECTOR_TOKENS"] = token
    values.update(overrides)
    return load_settings(**values)


class CollectorEnvironment:
    """A running collector (gRPC server + in-process worker) for tests and demos.

    Use it as a context manager, ``with`` or ``async with`` (starting and
    stopping run in a thread, so an event loop is never blocked), or call
    ``start()`` and ``stop()`` yourself. Stopping drains like SIGTERM does:
    health turns NOT_SERVING, in-flight calls get a few seconds to finish.

    ``settings``: from ``make_settings``; None for a collector on embedded
    PostgreSQL and Redis (or DATABASE_URL / REDIS_URL) in a temporary folder.
    ``work``: also run a worker, so runs get answered (False: serve only, for
    worker processes of your own). ``migrate``: bring the schema up to date."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        work: bool = True,
        migrate: bool = True,
        start_timeout_s: float = START_TIMEOUT_S,
        thread_name: str = "nex-collector",
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if settings is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nex-collector-")
            settings = make_settings(self._tmp.name)
        self.settings = settings
        self._work = work
        self._migrate = migrate
        self._start_timeout_s = start_timeout_s
        self._loop = asyncio.new_event_loop()  # closed by the thread, when it ends
        self._stop = asyncio.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name=thread_name, daemon=True)
        self._address: str | None = None
        self._container: Container | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> CollectorEnvironment:
        """Starts the collector and waits until it serves; returns ``self``.
        A collector that cannot start raises ``CollectorStartError``."""
        self._thread.start()
        try:
            if not self._started.wait(self._start_timeout_s):
                raise CollectorStartError(
                    f"the collector did not start within {self._start_timeout_s:g} s"
                )
            if self._address is None:
                raise CollectorStartError(
                    f"the collector did not start: {self._error}"
                ) from self._error
        except BaseException:  # a failed start, or Ctrl-C while starting
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Drains and stops the collector (waiting at most ``timeout`` seconds),
        then removes the temporary folder, if it made one. Safe to call twice."""
        if self._thread.ident is None:  # never started
            self._loop.close()
        elif self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        if self._tmp is not None and not self._thread.is_alive():
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> CollectorEnvironment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> CollectorEnvironment:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------- what tests use

    @property
    def address(self) -> str:
        """``host:port`` the collector listens on (plaintext unless the settings
        name a TLS certificate)."""
        if self._address is None:
            raise RuntimeError("the collector is not running: start() it first")
        return self._address

    @property
    def token(self) -> str | None:
        """The first accepted bearer token, or None when authentication is off."""
        tokens = (t.strip() for t in self.settings.tokens_csv.split(","))
        return next((t for t in tokens if t), None)

    def client(self, **options: Any) -> Client:
        """A blocking client connected with ``token``; close it, or use it in a
        ``with``. ``options`` go to ``nex.collector.client.connect``."""
        from nex.collector.client import connect

        return connect(self.address, self.token, **options)

    def async_client(self, **options: Any) -> Connecting:
        """An async client connected with ``token``: ``await`` it (and close it)
        or ``async with`` it. ``options`` go to ``connect_async``."""
        from nex.collector.client import connect_async

        return connect_async(self.address, self.token, **options)

    @property
    def container(self) -> Container:
        """The collector's services, repositories and connections (advanced:
        reach them with ``call``, on the collector's own loop)."""
        if self._container is None:
            raise RuntimeError("the collector is not running: start() it first")
        return self._container

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the collector runs on (in its own thread)."""
        return self._loop

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs ``coro`` on the collector's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --------------------------------------------------------------- inside

    def _ready(self, container: Container, server: GrpcServer | None) -> None:
        self._container = container
        self._address = server.address if server is not None else None
        self._started.set()

    async def _serve(self) -> None:
        from nex.collector.server.runtime import run

        try:
            await run(
                self.settings,
                serve=True,
                work=self._work,
                migrate=self._migrate,
                stop=self._stop,
                ready=self._ready,
            )
        except BaseException as exc:
            if self._started.is_set():
                raise  # failed while serving: the thread's exception (pytest reports it)
            self._error = exc  # failed to start: start() raises it
        finally:
            self._started.set()

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()
