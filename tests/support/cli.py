"""Running ``nex-collector`` commands in tests, as a person at a terminal would."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from typer.testing import CliRunner, Result

from nex.collector.server.cli.main import app
from tests.support.collector import RunningCollector


def invoke(collector: RunningCollector | None, *args: str) -> Result:
    """Runs ``nex-collector ARGS`` in a worker thread (the commands call
    asyncio.run, which must not touch the test's event loop)."""
    conn = ["--addr", collector.address, "--token", collector.token] if collector else []
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, app, [*args, *conn]).result(timeout=60)


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
