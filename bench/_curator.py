"""Curator 0.1.31 as a benchmark peer: its own venv under bench/ (it pins other
versions of openai and pydantic than the collector), made on first use, and one
pass of it in a subprocess. Whatever goes wrong is said, never raised: the other
peers go on without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-curator"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed-0.1.31"
LOG = BENCH / ".venv-curator.log"
PASS_LOG = BENCH / ".curator-pass.log"  # what the last passes said (kept after the run)
REQUIREMENT = "bespokelabs-curator==0.1.31"
SCRIPT = BENCH / "curator_peer.py"


@dataclass(frozen=True)
class Pass:
    runs_per_s: float
    cpu_s: float


def ensure() -> str | None:
    """None when Curator's venv is ready (made now if missing), else why not."""
    if STAMP.exists():
        return None
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"  (installing {REQUIREMENT} into {VENV.relative_to(BENCH.parent)}; log: {LOG})")
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(PYTHON), "-m", "pip", "install", "--quiet", REQUIREMENT],
        [str(PYTHON), "-c", "from bespokelabs import curator"],
    ]
    with LOG.open("w") as log:
        for step in steps:
            try:
                done = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, timeout=1200)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"cannot install {REQUIREMENT}: {exc}"
            if done.returncode != 0:
                return f"cannot install {REQUIREMENT}: `{' '.join(step[-2:])}` failed (see {LOG})"
    STAMP.touch()
    return None


def run_pass(base_url: str, runs: int, tokens: int, offset: int, log: Path) -> Pass | str:
    """One pass of N text-only requests; its figures, or why there are none."""
    args = [
        str(PYTHON),
        str(SCRIPT),
        "--base-url",
        f"{base_url}/v1",
        "--runs",
        str(runs),
        "--tokens",
        str(tokens),
        "--offset",
        str(offset),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    try:
        with log.open("ab") as err:
            done = subprocess.run(args, stdout=subprocess.PIPE, stderr=err, env=env, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Curator did not run: {exc}"
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        said = [line.strip() for line in log.read_text(errors="replace").splitlines()]
        last = next((line for line in reversed(said) if line), "")[:200]
        return f"Curator failed (exit {done.returncode}: {last}; see {log})"
    figures = json.loads(lines[-1])
    return Pass(figures["runs"] / figures["seconds"], float(figures["cpu_s"]))
