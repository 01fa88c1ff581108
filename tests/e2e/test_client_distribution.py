"""The shipped client installs alone: its wheel, built from client/, goes into a
fresh venv with nothing but its declared dependencies, and talks to a running
collector from there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.support.collector import TOKEN

ROOT = Path(__file__).resolve().parents[2]

# What `pip install nex-collector-client` may bring: the client and what it
# imports (grpc, google.protobuf, google.rpc), with grpcio's own dependency.
EXPECTED_DISTRIBUTIONS = {
    "nex-collector-client",
    "grpcio",
    "protobuf",
    "googleapis-common-protos",
    "typing-extensions",
}

SCRIPT = r"""
import asyncio, importlib.util, json, sys

from nex.collector.client import AsyncClient, Connecting, NotFoundError, connect

target, token, name = sys.argv[1:4]
out = {}
with connect(target, token=token) as client:
    created = client.create_template(name, user_template="Explain {{ topic }}", variables=["topic"])
    out["listed"] = [(t.id, t.name, t.version) for t in client.list_templates(name=name)]
    out["created"] = created.id
    try:
        client.get_template("tpl_does_not_exist")
    except NotFoundError as exc:  # status details decoded with google.rpc alone
        out["not_found"] = type(exc).__name__


async def main():
    connecting = AsyncClient.connect(target, token)
    out["connecting"] = type(connecting) is Connecting
    async with connecting as client:
        out["async_listed"] = [t.version async for t in client.list_templates(name=name)]

asyncio.run(main())
try:
    import nex.collector.client.progress
except ImportError as exc:
    out["progress_error"] = str(exc)
out["server_importable"] = importlib.util.find_spec("nex.collector.server") is not None
out["rich_importable"] = importlib.util.find_spec("rich") is not None
print(json.dumps(out))
"""


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no pip, no setuptools) holding only the client wheel and
    what the wheel declares, at constraints.txt's versions."""
    work = tmp_path_factory.mktemp("client-dist")
    # Built from a copy so the source tree gets no build/ or *.egg-info.
    source = work / "src"
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    pip = (sys.executable, "-m", "pip", "--quiet")
    # The test venv's setuptools (grpcio-tools brings it) builds it: an isolated
    # build environment would cost seconds for the same backend.
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", work / "wheels", source)
    (wheel,) = (work / "wheels").glob("nex_collector_client-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(*pip, "--python", python, "install", "-c", ROOT / "constraints.txt", wheel)
    return python


def test_the_wheel_brings_only_the_client_and_its_declared_dependencies(
    client_python: Path,
) -> None:
    frozen = _run(sys.executable, "-m", "pip", "--python", client_python, "list", "--format=json")
    names = {d["name"].lower().replace("_", "-") for d in json.loads(frozen)}
    assert names == EXPECTED_DISTRIBUTIONS


def test_the_client_alone_calls_a_running_collector(
    client_python: Path, collector: CollectorEnvironment, tmp_path: Path
) -> None:
    name = unique("alone")
    # Run outside the checkout, so nothing but the venv's site-packages is importable.
    stdout = _run(client_python, "-I", "-c", SCRIPT, collector.address, TOKEN, name, cwd=tmp_path)
    out = json.loads(stdout.strip().splitlines()[-1])
    assert [(n, v) for _, n, v in out["listed"]] == [(name, 1)]
    assert out["listed"][0][0] == out["created"]
    assert out["not_found"] == "NotFoundError"
    assert out["connecting"] is True
    assert out["async_listed"] == [1]
    assert not out["server_importable"]
    assert not out["rich_importable"]
    assert "pip install 'nex-collector-client[progress]'" in out["progress_error"]
