"""The CLI starts fast: building its command tree (all that `--help` needs)
imports neither grpc, the settings, the database, the dataset writer nor the
teacher SDKs. Structural, not timed: each of these costs tens to hundreds of
milliseconds of start-up."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "grpc",
    "google.protobuf",
    "pydantic_settings",
    "sqlalchemy",
    "asyncpg",
    "pyarrow",
    "openai",
    "anthropic",
    "prometheus_client",
    "redis",
    "arq",
    "jinja2",
    "nex.collector.server.config",
    "nex.collector.client._async_client",
)

_PROBE = """
import sys
sys.argv = ["nex-collector", *sys.argv[1:]]
from nex.collector.server.cli.main import main
try:
    main()
except SystemExit:
    pass
heavy = {heavy!r}
print("LOADED:" + ",".join(m for m in heavy if m in sys.modules))
"""


def _loaded_after(*args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = done.stdout.rsplit("LOADED:", 1)[1].strip()
    return [m for m in last.split(",") if m]


def test_help_loads_no_heavy_module() -> None:
    assert _loaded_after("--help") == []


def test_subcommand_help_loads_no_heavy_module() -> None:
    assert _loaded_after("batch", "list", "--help") == []
    assert _loaded_after("dataset", "build", "--help") == []


def test_the_client_package_loads_grpc_on_first_use() -> None:
    probe = (
        "import sys, nex.collector.client as c; a = 'grpc' in sys.modules; "
        "c.connect; print(a, 'grpc' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True"]
