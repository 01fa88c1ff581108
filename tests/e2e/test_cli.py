"""The person-at-a-terminal commands (template, batch, run, dataset, demo)
through typer's CliRunner against the real collector. Their pure parts (the
JSONL reader, the filter mini-syntax, quantiles, the histogram) are tested in
tests/unit/test_cli_*.py."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

import nex.collector.server.cli.dataset_files as cli_dataset_files
from nex.collector.client import (
    Client,
    CollectorError,
    DatasetStatus,
    GenerationParams,
    UnimplementedError,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.support.cli import invoke, no_traceback, printed_id

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def template_id(collector: CollectorEnvironment) -> str:
    result = invoke(
        collector,
        "template", "create", "--name", unique("cli"),
        "--user", "Explain {{ topic }} in a {{ style }} way", "--var", "topic", "--var", "style",
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == 0, result.output
    match = re.search(r"(tpl_\w+)", result.output)
    assert match and "v1" in result.output
    return match.group(1)


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def _batch_count(client: Client) -> int:
    return sum(1 for _ in client.list_batches())


# ---------------------------------------------------------------- commands


def test_batch_create_watch_and_show(
    collector: CollectorEnvironment, client: Client, template_id: str, tmp_path: Path
) -> None:
    rows: list[object] = [{"topic": f"topic {i}", "style": "plain"} for i in range(6)]
    rows.append({"topic": "numbers", "style": 3, "_request_id": unique("cli-rid")})
    inputs = _jsonl(tmp_path / "vars.jsonl", rows)
    name = unique("cli-batch")
    result = invoke(
        collector,
        "batch", "create", "--template", template_id, "--inputs", str(inputs),
        "--provider", "mock", "--name", name, "--top-logprobs", "3", "--chunk", "3",
    )  # fmt: skip
    no_traceback(result)
    assert result.exit_code == 0, result.output
    batch_id = printed_id(result, "bat")
    assert "queued 7 runs" in result.output
    batch = client.get_batch(batch_id)
    assert (batch.name, batch.counts.total, batch.counts.completed) == (name, 7, 7)
    assert batch.params == GenerationParams(top_logprobs=3)
    assert "completed 7" in result.output  # the summary after the watch

    shown = invoke(collector, "batch", "show", batch_id, "--runs", "2")
    assert shown.exit_code == 0, shown.output
    assert "completed 7" in shown.output and "total 7" in shown.output
    run_id = printed_id(shown, "run")

    run = invoke(collector, "run", "show", run_id, "--tokens", "3")
    assert run.exit_code == 0, run.output
    assert "first 3 of" in run.output and "logprob" in run.output

    # Sending the same file again to the same batch creates nothing new.
    again = invoke(collector, "batch", "add", batch_id, "--inputs", str(inputs), "--no-watch")
    assert again.exit_code == 0, again.output
    assert "queued 0 runs" in again.output and client.get_batch(batch_id).counts.total == 7


def test_quiet_create_commands_print_only_the_new_id(
    collector: CollectorEnvironment, client: Client, tmp_path: Path
) -> None:
    """`ID=$(nex-collector … -q)`: stdout is the id alone, and the next command
    in the same process prints as usual again."""
    name = unique("cli-quiet")
    tpl = invoke(
        collector, "template", "create", "--name", name, "--user", "Hi {{ x }}", "--var", "x", "-q"
    )
    assert tpl.exit_code == 0, tpl.output
    assert client.get_template(tpl.stdout.strip()).name == name
    assert tpl.stdout == tpl.stdout.strip() + "\n"

    inputs = _jsonl(tmp_path / "vars.jsonl", [{"x": "a"}, {"x": "b"}])
    bat = invoke(
        collector, "batch", "create", "--template", tpl.stdout.strip(), "--inputs", str(inputs),
        "--quiet",
    )  # fmt: skip
    assert bat.exit_code == 0, bat.output
    batch = client.get_batch(bat.stdout.strip())
    assert batch.counts.completed == 2  # the id comes once every run has ended

    ds = invoke(
        collector, "dataset", "build", "--name", name, "--version", "v1",
        "--batch", batch.id, "-q",
    )  # fmt: skip
    assert ds.exit_code == 0, ds.output
    assert client.get_dataset(ds.stdout.strip()).status == DatasetStatus.READY

    ctx = invoke(collector, "context", "create", name, "1", "-q")
    assert ctx.exit_code == 0, ctx.output
    assert client.get_context_ref(ctx.stdout.strip()).nex_context_id == name

    loud = invoke(collector, "batch", "show", batch.id)
    assert "completed 2" in loud.output


def test_a_bad_line_is_named_and_nothing_is_created(
    collector: CollectorEnvironment, client: Client, template_id: str, tmp_path: Path
) -> None:
    before = _batch_count(client)
    broken = _jsonl(
        tmp_path / "broken.jsonl",
        [{"topic": "a", "style": "b"}, '{"topic": "c", "style": ', {"topic": "d", "style": "e"}],
    )
    result = invoke(
        collector, "batch", "create", "--template", template_id, "--inputs", str(broken)
    )
    no_traceback(result)
    assert result.exit_code == 1
    assert "error:" in result.output and "line 2: not valid JSON" in result.output

    missing = _jsonl(tmp_path / "missing.jsonl", [{"topic": "a", "style": "b"}, {"topic": "c"}])
    result = invoke(
        collector, "batch", "create", "--template", template_id, "--inputs", str(missing)
    )
    no_traceback(result)
    assert result.exit_code == 1
    assert "line 2: missing variables style" in result.output
    assert _batch_count(client) == before


def test_every_bad_line_is_reported_in_one_pass_and_counted_once(
    collector: CollectorEnvironment, client: Client, template_id: str, tmp_path: Path
) -> None:
    mixed = _jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"topic": "a", "style": "b"},
            '{"topic": ',  # not JSON
            {"topic": "c", "extra": "x"},  # missing style and an undeclared variable
        ],
    )
    result = invoke(collector, "batch", "create", "--template", template_id, "--inputs", str(mixed))
    no_traceback(result)
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "2 bad lines; nothing was sent" in said
    assert "line 2: not valid JSON" in said
    assert "line 3: missing variables style" in said
    assert "line 3: variables extra are not declared" in said


def test_client_errors_are_one_line_without_traceback(collector: CollectorEnvironment) -> None:
    result = invoke(collector, "batch", "show", "bat_doesnotexist")
    no_traceback(result)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "not found" in result.output

    result = invoke(None, "batch", "list", "--addr", collector.address, "--token", "wrong")
    no_traceback(result)
    assert result.exit_code == 1 and "--token" in result.output

    result = invoke(collector, "dataset", "build", "--name", "x", "--version", "1",
                    "--batch", "bat_x", "--filter", "size:max=3")  # fmt: skip
    assert result.exit_code == 2 and "unknown filter kind" in result.output


def _datasets_offered(client: Client) -> bool:
    try:
        client.build_dataset(unique("probe"), "v1", [])
    except UnimplementedError:
        return False
    except CollectorError:
        return True
    return True


def test_dataset_build_show_and_verify(
    collector: CollectorEnvironment, client: Client, template_id: str, tmp_path: Path
) -> None:
    if not _datasets_offered(client):
        pytest.skip("this collector answers UNIMPLEMENTED for BuildDataset")
    batch = client.create_batch(
        unique("cli-ds"), template_id, "mock", "m", params=GenerationParams(top_logprobs=3)
    )
    client.create_runs(batch.id, [{"topic": f"t{i}", "style": "s"} for i in range(8)])
    for _ in client.watch_batch(batch.id):
        pass
    built = invoke(
        collector,
        "dataset", "build", "--name", unique("cli-ds"), "--version", "v1", "--batch", batch.id,
        "--filter", "length:min_chars=1", "--filter", "boolean:finish_reason_stop",
    )  # fmt: skip
    no_traceback(built)
    assert built.exit_code == 0, built.output
    dataset_id = printed_id(built, "ds")
    for words in ("ready", "score quantiles", "p50", "mean_logprob", "runs dropped per filter"):
        assert words in built.output

    shown = invoke(collector, "dataset", "show", dataset_id, "--score", "length_chars")
    assert shown.exit_code == 0, shown.output
    assert "length_chars: 8 values" in shown.output or "length_chars:" in shown.output

    verified = invoke(collector, "dataset", "verify", dataset_id)
    assert verified.exit_code == 0, verified.output
    assert "every file matches manifest.json" in verified.output

    folder = Path(client.get_dataset(dataset_id).uri.removeprefix("file://"))
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in folder.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    with (copy / "targets.parquet").open("ab") as out:
        out.write(b"tampered")
    broken = invoke(None, "dataset", "verify", str(copy))
    no_traceback(broken)
    assert broken.exit_code == 1 and "targets.parquet" in broken.output


def test_dataset_show_and_verify_need_no_access_to_the_files(
    collector: CollectorEnvironment,
    client: Client,
    template_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This CLI reads scores and verifies through gRPC: it works the same when
    # nothing under the dataset's uri can be opened from here (another machine,
    # a bucket it has no credentials for).
    if not _datasets_offered(client):
        pytest.skip("this collector answers UNIMPLEMENTED for BuildDataset")
    batch = client.create_batch(
        unique("cli-rd"), template_id, "mock", "m", params=GenerationParams(top_logprobs=3)
    )
    client.create_runs(batch.id, [{"topic": f"t{i}", "style": "s"} for i in range(5)])
    for _ in client.watch_batch(batch.id):
        pass
    ready = client.wait_dataset(client.build_dataset(unique("cli-rd"), "v1", [batch.id]).id)
    # The CLI's only way to the files: a file:// uri that is a folder here.
    monkeypatch.setattr(cli_dataset_files, "local_dir", lambda uri: None)
    shown = invoke(collector, "dataset", "show", ready.id, "--score", "length_chars")
    verified = invoke(collector, "dataset", "verify", ready.id)
    monkeypatch.undo()
    assert shown.exit_code == 0, shown.output
    assert "score quantiles" in shown.output and "length_chars: 5 values" in shown.output
    assert verified.exit_code == 0, verified.output
    assert "every file matches manifest.json" in verified.output
    assert ready.uri in verified.output.replace("\n", "")


def test_demo_runs_against_a_running_collector(
    collector: CollectorEnvironment, client: Client
) -> None:
    datasets = _datasets_offered(client)
    result = invoke(collector, "demo", "--runs", "8")
    no_traceback(result)
    assert result.exit_code == 0, result.output
    assert f"Using the collector at {collector.address}" in result.output
    assert "8/8 completed" in result.output
    assert "top alternatives" in result.output  # outputs shown with their logprobs
    if datasets:
        assert "every file matches manifest.json" in result.output
        _run_the_try_lines(result.output)
    else:
        assert "does not offer DatasetService" in result.output
    assert "demo complete" in result.output


def _run_the_try_lines(output: str) -> None:
    """The commands the demo suggests run as printed, with what is installed."""
    import subprocess

    after = output.split("Try (", 1)[1].splitlines()[1:]
    lines = [line.strip() for line in itertools.takewhile(lambda s: s.startswith("  "), after)]
    assert len(lines) == 2, output
    for line in lines:
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        assert "y_text" in done.stdout, done.stdout


def test_client_commands_do_not_read_the_servers_configuration(
    collector: CollectorEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server setting that cannot start a server is none of a client's business.
    monkeypatch.setenv("MODE_INTEGRATION", "integrated")
    monkeypatch.delenv("NEX_BASE_URL", raising=False)
    monkeypatch.setenv("TEACHER_MAX_ATTEMPTS", "not a number")
    result = invoke(collector, "batch", "list")
    no_traceback(result)
    assert result.exit_code == 0, result.output


def test_a_mistyped_command_says_error_like_every_other_failure() -> None:
    import subprocess
    import sys

    cli = Path(sys.executable).parent / "nex-collector"
    done = subprocess.run(
        [str(cli), "batch", "create", "--inputs", "x.jsonl"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "error: Missing option '--template'" in done.stderr, done.stderr
    assert "Error" not in done.stderr and "Traceback" not in done.stderr
