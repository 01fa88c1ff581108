"""The streaming Parquet dataset builder, on local files (no database)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nex.collector.server.domain.filters import (
    BooleanFilter,
    EntropyFilter,
    Filter,
    InvalidFiltersError,
    LengthFilter,
    RegexFilter,
)
from nex.collector.server.domain.scoring import MetricError, MetricRegistry, mean_entropy
from nex.collector.server.domain.targets import soft_labels
from nex.collector.server.domain.teacher import CompletedRun, TokenLogprobs
from nex.collector.server.parquet import (
    FILE_NAMES,
    SCHEMAS,
    BuildResult,
    DatasetExistsError,
    build_dataset,
    verify_dataset,
)
from nex.collector.server.parquet.storage import Location
from nex.collector.server.parquet.writer import _DICTIONARY_COLUMNS, _STATISTICS_COLUMNS
from tests.unit.distill_factories import LN, make_run, positions, synthetic_runs

EXTRA = {"id": "ds-1", "name": "cats", "version": "v1", "batch_ids": ["batch-1"]}


async def chunked(
    runs: Sequence[CompletedRun], size: int = 1000
) -> AsyncIterator[list[CompletedRun]]:
    for i in range(0, len(runs), size):
        await asyncio.sleep(0)
        yield list(runs[i : i + size])


async def build(
    runs: Sequence[CompletedRun],
    out: Path | Location,
    *,
    filters: Sequence[Filter] = (),
    chunk: int = 1000,
    metrics: MetricRegistry | None = None,
    **kwargs: Any,
) -> BuildResult:
    return await build_dataset(
        chunked(runs, chunk),
        filters=filters,
        metrics=metrics or MetricRegistry(),
        final_dir=out,
        manifest_extra=EXTRA,
        **kwargs,
    )


def sql(query: str) -> list[tuple[Any, ...]]:
    with duckdb.connect() as con:
        return con.execute(query).fetchall()


def read(directory: Path, table: str) -> pa.Table:
    return pq.read_table(directory / FILE_NAMES[table])


def mixed_runs() -> list[CompletedRun]:
    """An OpenAI-like run, an Anthropic-like run without logprobs, a run with
    ragged alternatives, and one with logprobs but no alternatives."""
    return [
        make_run(
            "run-a",
            output="Hi there",
            tokens=positions(
                ("Hi", -0.1, [("Hi", LN(0.6)), ("Hello", LN(0.2))]),
                (" there", -0.3, [(" there", LN(0.5)), (" you", LN(0.25)), ("!", LN(0.25))]),
            ),
            scores={"judge": 0.9},
            variables={"z": "last", "a": "first"},
        ),
        make_run(
            "run-b",
            output="Bonjour",
            tokens=None,
            provider="anthropic",
            model="claude-x",
            output_tokens=3,
        ),
        make_run(
            "run-c",
            output="Yes.",
            tokens=positions(
                ("Yes", -0.05, [("Yes", -0.05)]),
                (".", -0.5, []),
                ("", -1.0, [("x", -1.0), ("y", -2.0)]),
            ),
            finish_reason="length",
        ),
        make_run("run-d", output="No", tokens=positions(("No", -0.2, [])), scores={"judge": 0.1}),
    ]


async def test_builds_five_files_and_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "cats" / "v1"
    seen: list[tuple[int, int]] = []
    result = await build(mixed_runs(), out, progress=lambda total, kept: seen.append((total, kept)))

    assert sorted(p.name for p in out.iterdir()) == sorted([*FILE_NAMES.values(), "manifest.json"])
    assert result.total == result.kept == 4 and result.dropped == []
    assert result.uri == out.resolve().as_uri()
    assert seen == [(4, 4)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: manifest[k] for k in EXTRA} == EXTRA
    assert manifest["counts"] == {"total": 4, "kept": 4, "dropped": []}
    assert manifest["format_version"] == 1 and manifest["uri"] == result.uri
    assert [f["name"] for f in manifest["files"]] == list(FILE_NAMES.values())
    assert [(f.name, f.sha256, f.rows, f.bytes) for f in result.files] == [
        (f["name"], f["sha256"], f["rows"], f["bytes"]) for f in manifest["files"]
    ]
    assert verify_dataset(out) == []
    for table, schema in SCHEMAS.items():
        assert read(out, table).schema.equals(schema, check_metadata=True), table
        assert read(out, table).column_names[0] == "example_id"
    assert not list(await asyncio.to_thread(lambda: list(tmp_path.glob("cats/.v1.tmp-*"))))


async def test_rows_hold_what_the_runs_hold(tmp_path: Path) -> None:
    runs = mixed_runs()
    out = tmp_path / "v1"
    await build(runs, out)

    examples = read(out, "examples").to_pylist()
    assert [e["example_id"] for e in examples] == ["run-a", "run-b", "run-c", "run-d"]
    assert [(e["has_logprobs"], e["has_soft_labels"]) for e in examples] == [
        (True, True),
        (False, False),
        (True, True),
        (True, False),
    ]
    assert examples[1]["teacher_model"] == "claude-x" and examples[0]["template_version"] == 3

    inputs = read(out, "inputs").to_pylist()
    assert inputs[0]["variables"] == [{"key": "a", "value": "first"}, {"key": "z", "value": "last"}]
    assert inputs[0]["messages"][1] == {"role": "user", "content": "Tell me about cats"}

    teacher = read(out, "teacher").to_pylist()
    for run, row in zip(runs, teacher, strict=True):  # the TokenLogprobs, column for column
        for column in ("tokens", "logprobs", "top_counts", "top_tokens", "top_logprobs"):
            assert row[column] == (None if run.tokens is None else getattr(run.tokens, column))
    assert teacher[0]["top_counts"] == [2, 3] and teacher[3]["top_tokens"] == []
    assert teacher[1]["model"] == "claude-x" and teacher[1]["output_tokens"] == 3

    targets = read(out, "targets").to_pylist()
    for run, row in zip(runs, targets, strict=True):
        assert row["y_text"] == run.output_text
        expected = soft_labels(run.tokens)
        if expected is None:
            assert row["y_probs"] is None and not row["has_soft_labels"]
            continue
        assert [[a["token"] for a in pos] for pos in row["y_probs"]] == [
            [t for t, _ in pos] for pos in expected
        ]
        for got, want in zip(row["y_probs"], expected, strict=True):
            assert [a["prob"] for a in got] == pytest.approx([p for _, p in want], abs=1e-12)
    assert [a["prob"] for a in targets[0]["y_probs"][0]] == pytest.approx([0.75, 0.25])

    scores = read(out, "scores").to_pylist()
    by_run: dict[str, dict[str, tuple[float, str]]] = {}
    for row in scores:
        by_run.setdefault(row["example_id"], {})[row["name"]] = (row["value"], row["source"])
    assert by_run["run-a"]["judge"] == (0.9, "posted")
    assert by_run["run-a"]["mean_entropy"][0] == pytest.approx(
        mean_entropy(runs[0].tokens), abs=1e-12
    )
    assert by_run["run-c"]["mean_entropy"][0] == pytest.approx(
        mean_entropy(runs[2].tokens), abs=1e-12
    )
    for no_entropy in ("run-b", "run-d"):
        assert "mean_entropy" not in by_run[no_entropy]
    assert {"mean_logprob", "perplexity"}.isdisjoint(by_run["run-b"])
    y_scores = targets[0]["y_scores"]
    assert [s["key"] for s in y_scores] == sorted(by_run["run-a"])
    assert {s["key"]: s["value"] for s in y_scores} == {
        k: v for k, (v, _) in by_run["run-a"].items()
    }


async def test_vectorised_scores_match_the_pure_functions(tmp_path: Path) -> None:
    runs = synthetic_runs(300, tokens_per_run=12, top_k=4)
    runs[5] = make_run(
        "run-00000005", tokens=positions(("a", -1.0, [("a", -1000.0), ("b", -1000.0)]))
    )
    runs[6] = make_run("run-00000006", tokens=positions(("a", 0.0, [("a", 0.0), ("b", -math.inf)])))
    runs[7] = make_run(
        "run-00000007", tokens=positions(("a", -9.0, [("a", -math.inf), ("b", -math.inf)]))
    )
    out = tmp_path / "v1"
    await build(runs, out, chunk=64)
    entropy = {
        r["example_id"]: r["value"]
        for r in read(out, "scores").to_pylist()
        if r["name"] == "mean_entropy"
    }
    y_probs = read(out, "targets").column("y_probs").to_pylist()
    for run, probs in zip(runs, y_probs, strict=True):
        assert entropy[run.run_id] == pytest.approx(mean_entropy(run.tokens), abs=1e-12)
        expected = soft_labels(run.tokens)
        assert expected is not None
        assert [[a["prob"] for a in pos] for pos in probs] == [
            pytest.approx([p for _, p in pos], abs=1e-12) for pos in expected
        ]
    assert entropy["run-00000007"] == pytest.approx(LN(2))


async def test_drops_are_counted_for_the_first_filter(tmp_path: Path) -> None:
    filters: list[Filter] = [
        LengthFilter(min_chars=3),
        RegexFilter("^[A-Z]", must_match=True),
        EntropyFilter(max=10.0),
    ]
    result = await build(
        [*mixed_runs(), make_run("run-e", output="x")], tmp_path / "v1", filters=filters
    )
    # run-e is too short; run-d ("No") too; run-b has no entropy.
    assert (result.total, result.kept) == (5, 2)
    assert [(d.index, d.filter, d.dropped) for d in result.dropped] == [
        (0, "length(min_chars=3)", 2),
        (1, "regex(pattern='^[A-Z]', must_match=True)", 0),
        (2, "entropy(max=10.0)", 1),
    ]
    manifest = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    assert manifest["counts"]["dropped"][2] == {
        "index": 2,
        "filter": "entropy(max=10.0)",
        "dropped": 1,
    }
    assert manifest["filters"] == [
        {"length": {"min_chars": 3}},
        {"regex": {"pattern": "^[A-Z]", "must_match": True}},
        {"entropy": {"max": 10.0}},
    ]
    assert read(tmp_path / "v1", "examples").column("example_id").to_pylist() == ["run-a", "run-c"]


@pytest.mark.parametrize("runs", [[], mixed_runs()], ids=["no-runs", "all-dropped"])
async def test_an_empty_result_writes_valid_empty_files(
    tmp_path: Path, runs: list[CompletedRun]
) -> None:
    out = tmp_path / "v1"
    result = await build(runs, out, filters=[BooleanFilter("has_output", False)])
    assert result.kept == 0 and result.total == len(runs)
    assert all(f.rows == 0 for f in result.files)
    assert verify_dataset(out) == []
    for table, schema in SCHEMAS.items():
        assert read(out, table).num_rows == 0
        assert read(out, table).schema.equals(schema)
        assert sql(f"SELECT count(*) FROM read_parquet('{out / FILE_NAMES[table]}')") == [(0,)]


def digests(result: BuildResult) -> dict[str, str]:
    return {f.name: f.sha256 for f in result.files}


async def test_rebuilds_are_byte_identical_whatever_the_chunking(tmp_path: Path) -> None:
    runs = synthetic_runs(500) + mixed_runs()
    filters = [LengthFilter(min_chars=5)]
    first = await build(runs, tmp_path / "a", filters=filters, chunk=1000, row_group_size=128)
    again = await build(runs, tmp_path / "b", filters=filters, chunk=1000, row_group_size=128)
    rechunked = await build(runs, tmp_path / "c", filters=filters, chunk=7, row_group_size=128)
    assert digests(first) == digests(again) == digests(rechunked)
    for name in FILE_NAMES.values():
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    other = await build(
        runs, tmp_path / "d", filters=[LengthFilter(min_chars=20)], chunk=1000, row_group_size=128
    )
    assert other.kept < first.kept
    assert digests(other) != digests(first)


async def test_row_groups_are_bounded_by_rows_and_bytes(tmp_path: Path) -> None:
    runs = synthetic_runs(25)
    await build(runs, tmp_path / "rows", chunk=3, row_group_size=10)
    meta = pq.ParquetFile(tmp_path / "rows" / "examples.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10, 10, 5]
    scores = pq.ParquetFile(tmp_path / "rows" / "scores.parquet").metadata
    assert scores.num_row_groups == 3  # the same examples in each file's row group i

    await build(runs, tmp_path / "bytes", chunk=3, max_row_group_bytes=1)
    assert pq.ParquetFile(tmp_path / "bytes" / "teacher.parquet").metadata.num_row_groups == 25


async def test_files_open_in_duckdb_and_join_on_example_id(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    await build(synthetic_runs(50) + mixed_runs(), out)

    def path(table: str) -> str:
        return str(out / FILE_NAMES[table])

    rows = sql(
        f"""
        SELECT e.example_id, e.teacher_model, map_from_entries(i.variables)['topic'] AS topic,
               len(t.tokens) AS n, g.y_text, s.value AS chars
        FROM read_parquet('{path("examples")}') e
        JOIN read_parquet('{path("inputs")}') i USING (example_id)
        JOIN read_parquet('{path("teacher")}') t USING (example_id)
        JOIN read_parquet('{path("targets")}') g USING (example_id)
        JOIN read_parquet('{path("scores")}') s
          ON s.example_id = e.example_id AND s.name = 'length_chars'
        ORDER BY e.example_id
        """
    )
    assert len(rows) == 54
    assert rows[0][:3] == ("run-00000000", "gpt-test", "topic 0")
    for _, _, _, _, y_text, chars in rows:
        assert chars == len(y_text)
    ((worst,),) = sql(
        f"""
        SELECT max(abs(list_sum(list_transform(pos, lambda a: a.prob)) - 1))
        FROM (SELECT unnest(y_probs) AS pos
              FROM read_parquet('{path("targets")}') WHERE has_soft_labels)
        WHERE len(pos) > 0
        """
    )
    assert worst < 1e-12


async def failing_after(
    runs: Sequence[CompletedRun], chunks_before_failure: int
) -> AsyncIterator[list[CompletedRun]]:
    for i in range(chunks_before_failure):
        yield list(runs[i * 5 : (i + 1) * 5])
    raise ConnectionError("database went away")


def leftovers(parent: Path) -> list[Path]:
    return sorted(parent.iterdir()) if parent.exists() else []


async def test_a_failure_mid_build_leaves_nothing_behind(tmp_path: Path) -> None:
    runs = synthetic_runs(50)
    with pytest.raises(ConnectionError, match="database went away"):
        await build_dataset(
            failing_after(runs, 3),
            filters=[],
            metrics=MetricRegistry(),
            final_dir=tmp_path / "ds" / "v1",
            manifest_extra=EXTRA,
            row_group_size=4,
        )
    assert leftovers(tmp_path / "ds") == []
    result = await build(runs, tmp_path / "ds" / "v1")  # a rebuild succeeds
    assert result.kept == 50 and verify_dataset(tmp_path / "ds" / "v1") == []


async def test_a_failing_metric_fails_the_build_cleanly(tmp_path: Path) -> None:
    def boom(run: CompletedRun) -> float:
        if run.run_id.endswith("7"):
            raise RuntimeError("bad run")
        return 1.0

    with pytest.raises(MetricError, match="run-00000007"):
        await build(
            synthetic_runs(20), tmp_path / "v1", chunk=3, metrics=MetricRegistry({"boom": boom})
        )
    assert leftovers(tmp_path) == []


async def test_inconsistent_logprobs_fail_the_build_naming_the_run(tmp_path: Path) -> None:
    bad = make_run(
        "run-bad", tokens=TokenLogprobs(tokens=["a", "b"], logprobs=[-1.0], top_counts=[0, 0])
    )
    with pytest.raises(ValueError, match="run-bad has inconsistent token logprobs"):
        await build([make_run(), bad], tmp_path / "v1")
    assert leftovers(tmp_path) == []


async def test_cancellation_leaves_nothing_behind(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[list[CompletedRun]]:
        yield synthetic_runs(10)
        started.set()
        await asyncio.Event().wait()
        yield []  # pragma: no cover

    task = asyncio.create_task(
        build_dataset(
            stalls(),
            filters=[],
            metrics=MetricRegistry(),
            final_dir=tmp_path / "v1",
            manifest_extra={},
        )
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(tmp_path) == []


async def test_an_existing_version_is_never_touched(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetExistsError):
        await build(mixed_runs(), out)
    assert [p.name for p in leftovers(tmp_path)] == ["v1"] and (
        out / "keep.txt"
    ).read_text() == "mine"


async def test_bad_arguments_fail_before_touching_the_disk(tmp_path: Path) -> None:
    with pytest.raises(InvalidFiltersError):
        await build(mixed_runs(), tmp_path / "v1", filters=[RegexFilter(r"(a)\1")])
    with pytest.raises(ValueError, match="counts"):
        await build_dataset(
            chunked([]),
            filters=[],
            metrics=MetricRegistry(),
            final_dir=tmp_path / "v1",
            manifest_extra={"counts": 1},
        )
    with pytest.raises(TypeError, match="not JSON"):
        await build_dataset(
            chunked([]),
            filters=[],
            metrics=MetricRegistry(),
            final_dir=tmp_path / "v1",
            manifest_extra={"x": object()},
        )
    assert leftovers(tmp_path) == []


async def test_stale_staging_folders_of_killed_builds_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".v1.tmp-deadbeef"
    stale.mkdir()
    (stale / "teacher.parquet").write_bytes(b"half")
    unrelated = tmp_path / ".v10.tmp-cafe"
    unrelated.mkdir()
    await build(mixed_runs(), tmp_path / "v1")
    assert [p.name for p in leftovers(tmp_path)] == [".v10.tmp-cafe", "v1"]


async def test_async_progress_sees_each_chunk(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    async def progress(total: int, kept: int) -> None:
        seen.append((total, kept))

    await build(
        synthetic_runs(10),
        tmp_path / "v1",
        chunk=4,
        progress=progress,
        filters=[LengthFilter(min_chars=8)],
    )
    assert [total for total, _ in seen] == [4, 8, 10]
    assert all(kept <= total for total, kept in seen)


async def test_verify_reports_tampering(tmp_path: Path) -> None:
    out = tmp_path / "v1"
    await build(mixed_runs(), out)
    data = bytearray((out / "targets.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "targets.parquet").write_bytes(bytes(data))
    (out / "scores.parquet").unlink()
    (out / "notes.txt").write_text("?")
    problems = verify_dataset(out)
    assert any(p.startswith("targets.parquet: sha256") for p in problems)
    assert "scores.parquet: listed in the manifest but missing" in problems
    assert "notes.txt: present but not listed in the manifest" in problems
    assert verify_dataset(tmp_path / "nowhere") == [
        f"manifest.json is missing in {tmp_path / 'nowhere'}"
    ]


def parquet_paths(table: str) -> set[str]:
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, SCHEMAS[table]).close()
    schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return {schema.column(i).path for i in range(len(schema))}


@pytest.mark.parametrize("table", list(SCHEMAS))
def test_writer_options_name_real_columns(table: str) -> None:
    paths: Iterable[str] = parquet_paths(table)
    assert set(_DICTIONARY_COLUMNS[table]) <= set(paths)
    assert set(_STATISTICS_COLUMNS[table]) <= set(paths)


async def test_verify_checks_files_against_the_format_version_of_the_manifest(
    tmp_path: Path,
) -> None:
    out = tmp_path / "v1"
    await build(mixed_runs(), out)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["format_version"] == 1 and verify_dataset(out) == []
    # Read as the parts layout, the single files are not where version 2 puts them.
    manifest_path.write_text(json.dumps({**manifest, "format_version": 2, "parts": 1}))
    problems = verify_dataset(out)
    assert "examples.parquet: format_version 2 names files <table>/part-NNNNN.parquet" in problems
    assert "examples/part-00000.parquet: not listed in the manifest" in problems
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    assert verify_dataset(out) == ["manifest.json has format_version 99; this server reads 1 and 2"]
