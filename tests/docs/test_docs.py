"""Every fenced code block of README.md and docs/*.md runs, in order, the way
a new user would follow the page, against a real running collector.

- ``python``: one interpreter per page; each block runs in it after the ones
  before (names defined earlier stay defined).
- ``bash``: each block in ``bash -eo pipefail``; shell variables and functions
  set by a block are there in the next blocks of the page (``TPL=$(… -q)``).
  ``.venv/bin`` is on PATH and ``NEX_COLLECTOR_ADDR`` names the collector.
- ``sql``: DuckDB (its Python package), and the query must return rows.
- ``json``: must parse. ``toml``: must parse; a teachers file (``[teachers.*]``)
  also goes through ``check_teachers_file``.

The collector serves without tokens, like ``make dev``; the address the docs
use (``localhost:50051`` / ``127.0.0.1:50051``) is replaced by the test
collector's. Blocks run in a folder of their own whose ``.data`` is the
collector's DATA_DIR and whose ``.venv`` is the project's, so the paths the
docs print (``.data/datasets/<name>/<version>``, ``.venv/bin/…``) resolve.

A block that cannot run in a test (a server that runs until Ctrl-C, several
terminals) says so right before its fence::

    <!-- docs-test: skip (starts the long-running server the other blocks talk to) -->

Any other block in a language without a runner, and any skip without a
reason, fails the test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import teacher_settings
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOC_ADDRESSES = ("localhost:50051", "127.0.0.1:50051")
BLOCK_TIMEOUT_S = 120.0
RUNNERS = ("python", "bash", "sql", "json", "toml")
VARYING_MANIFEST_KEYS = {"params", "filters"}  # their keys depend on the build

_FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")
_DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
_SKIP = re.compile(r"^skip(?:\s*\((.*)\))?$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the reason given, when the block is marked to be skipped

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


class DocsError(Exception):
    """A block that is malformed, has no runner, or failed."""


def extract(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, in order, with their docs-test mark."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocsError(f"{page.relative_to(ROOT)}:{start + 1}: unclosed code fence")
        i += 1
        blocks.append(
            Block(page, start + 1, lang, "\n".join(body) + "\n", _skip(page, lines, start))
        )
    return blocks


def _skip(page: Path, lines: list[str], fence: int) -> str | None:
    """The skip reason of the ``<!-- docs-test: … -->`` line right before a fence."""
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    mark = _DIRECTIVE.match(lines[before].strip()) if before >= 0 else None
    if mark is None:
        return None
    skip = _SKIP.match(mark.group(1))
    where = f"{page.relative_to(ROOT)}:{before + 1}"
    if skip is None:
        raise DocsError(f"{where}: unknown docs-test directive {mark.group(1)!r}")
    reason = (skip.group(1) or "").strip()
    if not reason:
        raise DocsError(f"{where}: a skipped block must say why: skip (reason)")
    return reason


def check_runnable(block: Block) -> None:
    if block.skip is None and block.lang not in RUNNERS:
        raise DocsError(
            f"{block.where()}: no runner for a {block.lang or 'plain'!r} block; run it as "
            f"one of {', '.join(RUNNERS)}, or mark it "
            "<!-- docs-test: skip (why it cannot run in a test) -->"
        )


# ------------------------------------------------------------------ runners

_PYTHON_RUNNER = r"""
import json, sys, traceback
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    code = json.loads(request)
    ok = True
    try:
        exec(compile(code["source"], code["name"], "exec"), namespace)
    except BaseException:
        traceback.print_exc(file=sys.stdout)
        ok = False
    sys.stdout.flush()
    sys.stderr.flush()
    print("\n@@docs-block-end@@ " + ("ok" if ok else "failed"), flush=True)
"""

_END = "@@docs-block-end@@ "


class PythonSession:
    """One interpreter per page: blocks share their names, as in a notebook."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-c", _PYTHON_RUNNER],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, source: str, name: str) -> tuple[bool, str]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"source": source, "name": name}) + "\n")
        self._proc.stdin.flush()
        output: list[str] = []
        for line in self._proc.stdout:
            if line.startswith(_END):
                return line[len(_END) :].strip() == "ok", "".join(output)
            output.append(line)
        return False, "".join(output) + "\n(the interpreter exited)"

    def close(self) -> None:
        if self._proc.stdin:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_BASH_EPILOGUE = r"""
{ for __v in $(compgen -v); do
    case " $__BASELINE " in *" $__v "*) continue ;; esac
    case "$__v" in __*|BASH*|FUNCNAME|PIPESTATUS|_) continue ;; esac
    declare -p "$__v" 2>/dev/null
  done
  declare -f
} > "$__STATE.next"
"""


class BashSession:
    """Each block in its own bash; variables and functions it sets carry over."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self._cwd = cwd
        self._env = env
        self._state = cwd / ".docs-bash-state"
        self._state.write_text("")
        baseline = subprocess.run(
            ["bash", "-c", "compgen -v"], env=env, capture_output=True, text=True, check=True
        )
        self._baseline = " ".join(baseline.stdout.split())

    def run(self, source: str, name: str) -> tuple[bool, str]:
        script = (
            f"source {self._state}\nset -eo pipefail\n{source}\n"
            f"__BASELINE='{self._baseline}' __STATE='{self._state}'\n{_BASH_EPILOGUE}"
        )
        done = subprocess.run(
            ["bash", "-c", script, name],
            cwd=self._cwd,
            env=self._env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        if done.returncode == 0:
            Path(f"{self._state}.next").replace(self._state)
        return done.returncode == 0, done.stdout


def check_teachers_file(doc: dict[str, Any], text: str) -> None:
    """A teachers file in the docs must load with the collector's own loader,
    with the key variables it names set (as an operator would have them)."""
    from nex.collector.server.config import ConfigError, load_settings, load_teachers

    names = {
        str(t.get("api_key_env") or {"openai": "OPENAI_API_KEY"}.get(t.get("kind", ""), ""))
        for t in doc["teachers"].values()
    } - {""}
    with tempfile.TemporaryDirectory(prefix="nexc-docs-teachers-") as tmp:
        path = Path(tmp) / "teachers.toml"
        path.write_text(text)
        saved = {n: os.environ.get(n) for n in names}
        os.environ.update(dict.fromkeys(names, "sk-docs-example"))
        try:
            loaded = load_teachers(load_settings(TEACHERS_FILE=path))
        except ConfigError as exc:
            raise DocsError(f"the teachers file does not load: {exc}") from None
        finally:
            for n, value in saved.items():
                if value is None:
                    os.environ.pop(n, None)
                else:
                    os.environ[n] = value
    missing = set(doc["teachers"]) - set(loaded.names)
    if missing:
        raise DocsError(f"teachers {sorted(missing)} of the file were not loaded")


def _for_the_test_collector(source: str, address: str) -> str:
    for doc_address in DOC_ADDRESSES:
        source = source.replace(doc_address, address)
    return source


def _sql_as_python(query: str) -> str:
    return (
        "import duckdb as _duckdb\n"
        f"_rows = _duckdb.sql({query!r}).fetchall()\n"
        "assert _rows, 'the query returned no rows'\n"
        "print(*_rows[:5], sep='\\n')\n"
    )


def run_page(page: Path, workdir: Path, collector: CollectorEnvironment) -> list[str]:
    """Runs every block of ``page`` in order; returns the skipped ones' places."""
    blocks = extract(page)
    for block in blocks:
        check_runnable(block)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("NEX_", "DATABASE_", "REDIS_", "MODE_", "DATA_DIR", "OPENAI", "ANTHROPIC")
        )
    }
    env.update(
        PATH=f"{ROOT / '.venv' / 'bin'}:{Path(sys.executable).parent}:{env.get('PATH', '')}",
        NEX_COLLECTOR_ADDR=collector.address,
        COLUMNS="120",
        NO_COLOR="1",
    )
    python = PythonSession(workdir, env)
    bash = BashSession(workdir, env)
    skipped = []
    try:
        for block in blocks:
            if block.skip is not None:
                skipped.append(block.where())
                continue
            source = _for_the_test_collector(block.code, collector.address)
            if block.lang == "python":
                ok, output = python.run(source, block.where())
            elif block.lang == "sql":
                ok, output = python.run(_sql_as_python(source), block.where())
            elif block.lang == "bash":
                ok, output = bash.run(source, block.where())
            elif block.lang == "json":
                ok, output = _parses(json.loads, source)
            else:
                ok, output = _parses(tomllib.loads, source)
                if ok and "teachers" in tomllib.loads(source):
                    check_teachers_file(tomllib.loads(source), source)
            if not ok:
                raise DocsError(
                    f"{block.where()}: the {block.lang} block failed:\n{block.code}"
                    f"\n--- output ---\n{output}"
                )
    finally:
        python.close()
    for block in blocks:
        if block.lang == "json" and block.skip is None:
            check_manifest_example(json.loads(block.code), block, collector)
    return skipped


def check_manifest_example(example: Any, block: Block, collector: CollectorEnvironment) -> None:
    """A manifest.json shown in the docs has the keys of a real one (built by
    this or an earlier page)."""
    if not (isinstance(example, dict) and {"files", "format_version"} <= example.keys()):
        return
    real = sorted(collector.settings.data_dir.glob("datasets/*/*/manifest.json"))
    if not real:
        raise DocsError(f"{block.where()}: no dataset was built to check the manifest against")
    manifest = json.loads(real[0].read_text())
    for path, shown, built in _dicts_side_by_side("", example, manifest):
        if sorted(shown) != sorted(built):
            raise DocsError(
                f"{block.where()}: the manifest shown has keys {sorted(shown)} at "
                f"{path or 'the top'}; a built one has {sorted(built)}"
            )


def _dicts_side_by_side(path: str, shown: Any, built: Any) -> Iterator[tuple[str, Any, Any]]:
    """Pairs of dicts at the same place in two JSON documents (lists: first
    items; the values of ``sources``, keyed by batch id: first values)."""
    if isinstance(shown, dict) and isinstance(built, dict):
        if path == "sources":
            yield from _dicts_side_by_side(
                "sources.*", next(iter(shown.values()), None), next(iter(built.values()), None)
            )
            return
        yield path, shown, built
        for key in shown.keys() & built.keys() - VARYING_MANIFEST_KEYS:
            yield from _dicts_side_by_side(f"{path}.{key}".strip("."), shown[key], built[key])
    elif isinstance(shown, list) and isinstance(built, list) and shown and built:
        yield from _dicts_side_by_side(f"{path}[0]", shown[0], built[0])


def _parses(parse: Any, source: str) -> tuple[bool, str]:
    try:
        parse(source)
    except ValueError as exc:
        return False, str(exc)
    return True, ""


# -------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def docs_root() -> Iterator[Path]:
    # Not under pytest's tmp_path: another pytest session on the machine prunes
    # old base folders, and with them a live DATA_DIR.
    with tempfile.TemporaryDirectory(prefix="nexc-docs-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def docs_collector(
    backing: Backing, docs_root: Path, teacher_api: FakeTeacherAPI
) -> Iterator[CollectorEnvironment]:
    """A collector as `make dev` runs it: no tokens; its DATA_DIR is ``.data``
    of the folders the blocks run in. Blocks that name `openai` or `anthropic`
    reach the fake teacher, as a real key would reach the real one."""
    data = docs_root / ".data"
    data.mkdir()
    # A database and Redis database of its own: the session's other collectors
    # (other DATA_DIRs) must not take its dataset builds.
    with backing.isolated() as own:
        settings = collector_settings(
            own, data, NEX_COLLECTOR_TOKENS="", **teacher_settings(teacher_api)
        )
        with CollectorEnvironment(settings) as running:
            yield running


def _workdir(root: Path, name: str, collector: CollectorEnvironment) -> Path:
    """A folder of its own for a page, whose ``.data`` and ``.venv`` are the
    collector's DATA_DIR and the project's."""
    workdir = root / name
    workdir.mkdir()
    (workdir / ".data").symlink_to(collector.settings.data_dir, target_is_directory=True)
    (workdir / ".venv").symlink_to(ROOT / ".venv", target_is_directory=True)
    return workdir


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_runs_in_order(
    page: Path, docs_collector: CollectorEnvironment, docs_root: Path
) -> None:
    run_page(page, _workdir(docs_root, page.stem, docs_collector), docs_collector)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_block_has_a_runner_or_says_why_not(page: Path) -> None:
    blocks = extract(page)
    assert blocks, f"{page}: no code blocks found (is the fence syntax right?)"
    for block in blocks:
        check_runnable(block)


# The checker itself must be able to fail.


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_an_unmarked_block_without_a_runner_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (block,) = extract(_page(tmp_path, "text\n\n```console\n$ make dev\n```\n"))
    with pytest.raises(DocsError, match="no runner"):
        check_runnable(block)


def test_a_skip_without_a_reason_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(DocsError, match="must say why"):
        extract(_page(tmp_path, "<!-- docs-test: skip -->\n```bash\nmake dev\n```\n"))


def test_a_skip_with_a_reason_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = _page(
        tmp_path, "<!-- docs-test: skip (runs until Ctrl-C) -->\n\n```bash\nmake dev\n```\n"
    )
    (block,) = extract(page)
    assert block.skip == "runs until Ctrl-C"
    check_runnable(block)


def test_bash_state_carries_across_blocks_and_failures_show(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"]}
    bash = BashSession(tmp_path, env)
    assert bash.run('X=$(echo 42)\nf() { echo "f:$1"; }\n', "one")[0]
    ok, output = bash.run('echo "x=$X"; f y\n', "two")
    assert ok and "x=42" in output and "f:y" in output
    ok, output = bash.run("false\necho not reached\n", "three")
    assert not ok and "not reached" not in output


def test_python_names_carry_across_blocks_and_failures_show(tmp_path: Path) -> None:
    python = PythonSession(tmp_path, dict(os.environ))
    try:
        assert python.run("x = 41\n", "one")[0]
        assert python.run("assert x + 1 == 42\n", "two")[0]
        ok, output = python.run("import pandas as pd\npd.DataFrame({'a': [1]}).b\n", "three")
        assert not ok and "AttributeError" in output
    finally:
        python.close()
