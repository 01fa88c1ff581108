"""Running ``nex-collector`` commands in tests, as a person at a terminal would."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from typer.testing import CliRunner, Result

from nex.collector.server.cli.main import app
from nex.collector.server.testing import CollectorEnvironment


def invoke(collector: CollectorEnvironment | None, *args: str) -> Result:
    """Runs ``nex-collector ARGS`` in a worker thread (the commands call
    asyncio.run, which must not touch the test's event loop)."""
    conn: list[str] = []
    if collector is not None:
        conn = ["--addr", collector.address]
        conn += ["--token", collector.token] if collector.token else []
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(CliRunner().invoke, app, [*args, *conn]).result(timeout=60)


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output


def printed_id(result: Result, prefix: str) -> str:
    """The first ``PREFIX_...`` id the command printed (the test fails without one)."""
    match = re.search(rf"({prefix}_\w+)", result.output)
    assert match, result.output
    return match.group(1)
