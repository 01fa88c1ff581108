"""DatasetService end to end: runs collected by real workers become Parquet files
that pyarrow and DuckDB open, with checksums that verify."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pyarrow.parquet as pq
import pytest

from nex.collector.client import (
    AlreadyExistsError,
    BooleanFilter,
    Client,
    DatasetManifest,
    DatasetStatus,
    EntropyFilter,
    Filter,
    GenerationParams,
    InvalidArgumentError,
    LengthFilter,
    NotFoundError,
    RegexFilter,
    RunStatus,
    ScoreFilter,
    TeacherBatch,
    TeacherRun,
)
from nex.collector.server.parquet.verify import verify_dataset
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.support.db import execute, fetch_all

FILES = [
    "examples.parquet",
    "inputs.parquet",
    "teacher.parquet",
    "targets.parquet",
    "scores.parquet",
]


def _collect(
    client: Client, provider: str = "mock", n: int = 16
) -> tuple[TeacherBatch, list[TeacherRun]]:
    template = client.create_template(
        unique("ds"), user_template="Write about {{ topic }}.", variables=["topic"]
    )
    model = {"mock": "mock-1", "anthropic": "claude-3-5-haiku-latest"}[provider]
    batch = client.create_batch(
        unique("ds"),
        template.id,
        provider,
        model,
        params=GenerationParams(top_logprobs=4, max_tokens=30),
    )
    created = client.create_runs(batch.id, [{"topic": f"subject number {i}"} for i in range(n)])
    for _ in client.watch_batch(batch.id):
        pass
    return batch, [client.get_run(r.id) for r in created]


@pytest.fixture(scope="module")
def collected(client: Client) -> tuple[TeacherBatch, list[TeacherRun]]:
    batch, runs = _collect(client)
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    return batch, runs


def _folder(manifest: DatasetManifest) -> Path:
    return Path(urlparse(manifest.uri).path)


def _build(
    client: Client,
    batch_ids: list[str],
    filters: Sequence[Filter] = (),
    *,
    allow_empty: bool = False,
) -> DatasetManifest:
    started = client.build_dataset(
        unique("set"), "v1", batch_ids, filters=filters, allow_empty=allow_empty
    )
    assert started.status == DatasetStatus.BUILDING
    return client.wait_dataset(started.id, timeout=60)


def test_build_writes_verifiable_parquet(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, runs = collected
    ready = _build(client, [batch.id])
    assert ready.status == DatasetStatus.READY
    assert (ready.counts.total, ready.counts.kept) == (len(runs), len(runs))
    folder = _folder(ready)
    assert sorted(f.name for f in ready.files) == sorted(FILES)
    assert verify_dataset(folder) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        f.name: f.sha256 for f in ready.files
    }
    assert manifest["id"] == ready.id and manifest["batch_ids"] == [batch.id]

    targets = pq.read_table(folder / "targets.parquet")
    assert targets.num_rows == len(runs)
    by_id = {r.id: r for r in runs}
    first = targets.slice(0, 1).to_pylist()[0]
    run = by_id[first["example_id"]]
    assert first["y_text"] == run.output_text and first["has_soft_labels"]
    assert len(first["y_probs"]) == len(run.tokens)
    assert abs(sum(p["prob"] for p in first["y_probs"][0]) - 1.0) < 1e-9

    con = duckdb.connect()
    joined = con.execute(
        f"""SELECT count(*) FROM '{folder}/examples.parquet' e
            JOIN '{folder}/inputs.parquet' i USING (example_id)
            JOIN '{folder}/teacher.parquet' t USING (example_id)
            JOIN '{folder}/targets.parquet' g USING (example_id)"""
    ).fetchone()
    assert joined == (len(runs),)
    names = {
        r[0] for r in con.execute(f"SELECT DISTINCT name FROM '{folder}/scores.parquet'").fetchall()
    }
    assert {"length_chars", "mean_logprob", "mean_entropy", "perplexity"} <= names


def test_each_filter_drops_what_it_should(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, runs = collected
    lengths = sorted(len(r.output_text) for r in runs)
    cut = lengths[len(lengths) // 2]
    word = runs[0].output_text.split()[0]
    client.set_run_scores(runs[0].id, {"judge": 0.9})
    client.set_run_scores(runs[1].id, {"judge": 0.2})
    cases: list[tuple[Filter, int]] = [
        (LengthFilter(min_chars=cut), sum(len(r.output_text) >= cut for r in runs)),
        (
            RegexFilter(pattern=re.escape(word), must_match=True),
            sum(word in r.output_text for r in runs),
        ),
        (
            RegexFilter(pattern=re.escape(word), must_match=False),
            sum(word not in r.output_text for r in runs),
        ),
        (BooleanFilter(name="has_logprobs", value=True), len(runs)),
        (BooleanFilter(name="has_logprobs", value=False), 0),
        (ScoreFilter(name="judge", min=0.5), 1),
        (EntropyFilter(min=0.0), len(runs)),
    ]
    for f, expected in cases:
        ready = _build(client, [batch.id], [f], allow_empty=expected == 0)
        assert ready.counts.kept == expected, f
        assert ready.counts.dropped[0].dropped == len(runs) - expected
        assert pq.read_table(_folder(ready) / "examples.parquet").num_rows == expected


def test_an_empty_result_asked_for_is_a_ready_dataset(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, runs = collected
    ready = _build(
        client,
        [batch.id],
        [LengthFilter(max_chars=0), RegexFilter(pattern="x")],
        allow_empty=True,
    )
    assert (
        ready.counts.kept,
        ready.counts.dropped[0].dropped,
        ready.counts.dropped[1].dropped,
    ) == (0, len(runs), 0)
    assert {f.rows for f in ready.files} == {0}
    assert verify_dataset(_folder(ready)) == []


def test_rebuilding_gives_byte_identical_files(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, _ = collected
    filters: list[Filter] = [
        LengthFilter(min_chars=1),
        RegexFilter(pattern="(a+)+$", must_match=False),
    ]
    one, two = _build(client, [batch.id], filters), _build(client, [batch.id], filters)
    assert {f.name: f.sha256 for f in one.files} == {f.name: f.sha256 for f in two.files}


def test_a_version_never_changes(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, _ = collected
    name = unique("fixed")
    first = client.wait_dataset(client.build_dataset(name, "1.0", [batch.id]).id)
    with pytest.raises(AlreadyExistsError):
        client.build_dataset(name, "1.0", [batch.id], filters=[LengthFilter(min_chars=5)])
    assert client.get_dataset(first.id) == first
    assert [d.version for d in client.list_datasets(name)] == ["1.0"]


def test_bad_build_requests(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    _batch, _ = collected
    with pytest.raises(InvalidArgumentError) as caught:
        client.build_dataset(
            "../escape",
            "",
            [],
            filters=[RegexFilter(pattern="(a)\\1"), LengthFilter(min_chars=10, max_chars=2)],
        )
    fields = {v.field for v in caught.value.field_violations}
    assert {
        "name",
        "version",
        "batch_ids",
        "filters[0].regex.pattern",
        "filters[1].length.min_chars",
    } <= fields, fields
    with pytest.raises(NotFoundError):
        client.build_dataset(unique("x"), "v1", ["bat_missing"])
    assert list(client.list_datasets("../escape")) == []


def test_request_id_returns_the_first_build(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, _ = collected
    request_id = unique("req")
    first = client.build_dataset(unique("idem"), "v1", [batch.id], request_id=request_id)
    again = client.build_dataset(unique("other"), "v9", [batch.id], request_id=request_id)
    assert again.id == first.id


def test_anthropic_runs_give_a_dataset_without_soft_labels(client: Client) -> None:
    batch, _runs = _collect(client, "anthropic", n=4)
    ready = _build(client, [batch.id], [EntropyFilter(max=100.0)], allow_empty=True)
    assert ready.counts.kept == 0  # no logprobs, so no entropy: dropped, not zero
    plain = _build(client, [batch.id])
    folder = _folder(plain)
    targets = pq.read_table(folder / "targets.parquet").to_pylist()
    assert len(targets) == 4 and not any(t["has_soft_labels"] for t in targets)
    assert all(t["y_probs"] is None for t in targets)
    names = {r["name"] for r in pq.read_table(folder / "scores.parquet").to_pylist()}
    assert "length_chars" in names and "mean_entropy" not in names and "perplexity" not in names


def test_token_texts_reach_the_files_exactly(
    client: Client, collector: CollectorEnvironment
) -> None:
    # Builds read token texts joined by U+001F; a token holding that character,
    # an empty token and non-ASCII ones must still come out exactly as stored.
    batch, runs = _collect(client, n=4)
    odd, empty = runs[0].id, runs[1].id
    execute(
        collector,
        "UPDATE runs SET token_texts[1] = 'a' || chr(31) || 'b', top_tokens[2] = chr(31)"
        " WHERE id = $1",
        odd,
    )
    execute(
        collector,
        "UPDATE runs SET token_texts[1] = '', top_tokens[1] = 'é😀' WHERE id = $1",
        empty,
    )
    ready = _build(client, [batch.id])
    teacher = pq.read_table(_folder(ready) / "teacher.parquet").to_pylist()
    stored = {
        row["id"]: (row["token_texts"], row["top_tokens"])
        for row in fetch_all(
            collector, "SELECT id, token_texts, top_tokens FROM runs WHERE batch_id = $1", batch.id
        )
    }
    assert {r["example_id"]: (r["tokens"], r["top_tokens"]) for r in teacher} == stored
    assert stored[odd][0][0] == "a\x1fb" and stored[empty][0][0] == ""


def test_a_build_that_keeps_nothing_fails_and_leaves_its_version_free(
    client: Client, collected: tuple[TeacherBatch, list[TeacherRun]]
) -> None:
    batch, runs = collected
    name = unique("empty")
    strict = [LengthFilter(min_chars=10**6)]
    failed = client.wait_dataset(
        client.build_dataset(name, "v1", [batch.id], filters=strict).id,
        timeout=60,
        raise_on_failure=False,
    )
    assert failed.status == DatasetStatus.FAILED
    assert failed.error is not None and failed.error.code == "EMPTY_DATASET"
    assert f"kept 0 of {len(runs)} runs" in failed.error.message
    assert not _folder(failed).exists()
    # The version was not used up: the same name and version build once fixed.
    fixed = client.wait_dataset(client.build_dataset(name, "v1", [batch.id]).id, timeout=60)
    assert fixed.status == DatasetStatus.READY and fixed.counts.kept == len(runs)
    with pytest.raises(AlreadyExistsError):
        client.build_dataset(name, "v1", [batch.id])
    # Asked for explicitly, an empty dataset builds.
    empty = client.wait_dataset(
        client.build_dataset(name, "v2", [batch.id], filters=strict, allow_empty=True).id,
        timeout=60,
    )
    assert empty.status == DatasetStatus.READY and empty.counts.kept == 0
