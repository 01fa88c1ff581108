"""A chunk of runs as Arrow columns, built column-wise for speed.

Per-token data never becomes per-token Python objects: ``pa.array`` converts
each run's columnar TokenLogprobs lists in one C-level pass, and the nested
columns are assembled from offsets. Soft labels and position entropies are
computed on those arrays with Arrow kernels, with the same formulas in the
same order as the pure ``domain.scoring`` / ``domain.targets`` functions (the
tests hold them to agree within 1e-12).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import accumulate

import pyarrow as pa
import pyarrow.compute as pc

from nex.collector.server.domain.scoring import has_logprobs, score_sources
from nex.collector.server.domain.teacher import TOKEN_SEPARATOR, CompletedRun, PackedStrings
from nex.collector.server.parquet.schema import (
    EXAMPLES,
    INPUTS,
    MESSAGE,
    SCORE,
    SCORES,
    SOFT_LABEL,
    TARGETS,
    TEACHER,
    VARIABLE,
    list_of,
)

__all__ = ["ChunkTables", "LogprobColumns", "estimated_bytes"]

_INT32_MAX = 2**31 - 1


def _offsets(values: Sequence[int]) -> pa.Array:
    if values and values[-1] > _INT32_MAX:
        raise ValueError("chunk too large for 32-bit list offsets; use smaller chunks")
    return pa.array(values, pa.int32())


def _list(offsets: pa.Array, values: pa.Array, mask: pa.Array | None = None) -> pa.Array:
    return pa.ListArray.from_arrays(offsets, values, type=list_of(values.type), mask=mask)


def _mask(present: Sequence[bool]) -> pa.Array | None:
    """A null mask (True = null) or None when every entry is present."""
    if all(present):
        return None
    return pa.array([not p for p in present], pa.bool_())


class LogprobColumns:
    """The per-token columns of a chunk of runs, plus each run's mean entropy.

    ``tokens``, ``logprobs``, ``top_counts``, ``top_tokens``, ``top_logprobs``
    (teacher table) and ``y_probs`` (targets table) have one entry per run; the
    teacher columns are null for runs without logprobs, ``y_probs`` for runs
    without top alternatives.
    """

    def __init__(self, runs: Sequence[CompletedRun]) -> None:
        columns = [run.tokens for run in runs]
        self.has_soft_labels = [_check(run) for run in runs]
        present = [t is not None for t in columns]

        # pa.array over the runs' own lists: one C-level pass, no per-token Python work.
        self.tokens = _texts([t.tokens if t is not None else None for t in columns])
        self.logprobs = pa.array(
            [t.logprobs if t is not None else None for t in columns], list_of(pa.float64())
        )
        self.top_counts = pa.array(
            [t.top_counts if t is not None else None for t in columns], list_of(pa.int32())
        )
        self.top_tokens = _texts([t.top_tokens if t is not None else None for t in columns])
        self.top_logprobs = pa.array(
            [t.top_logprobs if t is not None else None for t in columns], list_of(pa.float64())
        )
        del columns

        # Flat per-position / per-alternative views (fresh arrays: no slicing offsets).
        counts = self.top_counts.values
        alt_tokens = self.top_tokens.values
        alt_logprobs = self.top_logprobs.values
        run_offsets = self.tokens.offsets
        alt_offsets = pa.concat_arrays(
            [pa.array([0], pa.int32()), pc.cumulative_sum_checked(counts)]
        )

        probs, entropy = _softmax(alt_offsets, counts, alt_logprobs)
        labels = pa.StructArray.from_arrays([alt_tokens, probs], fields=list(SOFT_LABEL))
        y_offsets, y_alt_offsets = run_offsets, alt_offsets
        if self.has_soft_labels != present:
            # Runs with tokens but no alternatives get a null y_probs: drop their
            # (empty) positions so that every null entry has an empty range.
            run_positions = run_offsets.to_pylist()
            position_counts = counts.to_pylist()
            y_positions = [0]
            y_counts: list[int] = []
            for i, soft in enumerate(self.has_soft_labels):
                start, end = run_positions[i], run_positions[i + 1]
                if soft:
                    y_counts.extend(position_counts[start:end])
                y_positions.append(y_positions[-1] + (end - start if soft else 0))
            y_offsets = _offsets(y_positions)
            y_alt_offsets = _offsets(list(accumulate(y_counts, initial=0)))
        self.y_probs = _list(y_offsets, _list(y_alt_offsets, labels), _mask(self.has_soft_labels))
        self.mean_entropy = _mean_by_run(self.tokens, entropy)

    def take(self, indices: Sequence[int]) -> dict[str, pa.Array]:
        """The per-token columns for the runs at `indices` (in that order)."""
        columns = {
            "tokens": self.tokens,
            "logprobs": self.logprobs,
            "top_counts": self.top_counts,
            "top_tokens": self.top_tokens,
            "top_logprobs": self.top_logprobs,
            "y_probs": self.y_probs,
        }
        if len(indices) == len(self.tokens) and list(indices) == list(range(len(indices))):
            return columns
        where = pa.array(indices, pa.int32())
        return {name: column.take(where) for name, column in columns.items()}


def _texts(texts: Sequence[Sequence[str] | None]) -> pa.Array:
    """A list<string> column, one entry per run (null for None). When every run
    holds PackedStrings (a dataset read from PostgreSQL), all of them become one
    Arrow split: no Python object per token."""
    if not all(t is None or isinstance(t, PackedStrings) for t in texts):
        return pa.array(
            [t if t is None or isinstance(t, list) else list(t) for t in texts],
            list_of(pa.string()),
        )
    lengths = [0 if t is None else len(t) for t in texts]
    values = pa.array([], pa.string())
    if any(lengths):
        joined = TOKEN_SEPARATOR.join(
            t.joined for t in texts if isinstance(t, PackedStrings) and t.length
        )
        values = pc.split_pattern(pa.array([joined], pa.string()), TOKEN_SEPARATOR).values
    if len(values) != sum(lengths):
        raise ValueError("packed token texts do not split into their lengths")
    return _list(
        _offsets(list(accumulate(lengths, initial=0))),
        values,
        _mask([t is not None for t in texts]),
    )


def _check(run: CompletedRun) -> bool:
    """Validates a run's TokenLogprobs; returns whether it has soft labels."""
    t = run.tokens
    if t is None:
        return False
    n = len(t.tokens)
    n_alt = len(t.top_tokens)
    if (
        len(t.logprobs) != n
        or len(t.top_counts) != n
        or len(t.top_logprobs) != n_alt
        or sum(t.top_counts) != n_alt
        or min(t.top_counts, default=0) < 0
    ):
        raise ValueError(
            f"run {run.run_id} has inconsistent token logprobs: {n} tokens, "
            f"{len(t.logprobs)} logprobs, {len(t.top_counts)} top counts summing to "
            f"{sum(t.top_counts)}, {n_alt} top tokens, {len(t.top_logprobs)} top logprobs"
        )
    return n_alt > 0


def _softmax(offsets: pa.Array, counts: pa.Array, logprobs: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Per position, the renormalised probabilities of its alternatives (flat,
    aligned with `logprobs`) and the entropy in nats (null without alternatives).

    Mirrors domain.targets.renormalise and domain.scoring.position_entropy:
    m = max, e = exp(l - m), z = left-to-right sum of e, p = e / z,
    H = max(0, ln z - sum(e * (l - m)) / z). The j-th alternatives of all
    positions form one column (a take at offset + j), so each step is one
    Arrow kernel call over the chunk."""
    positions = len(counts)
    bounds = pc.min_max(counts).as_py()
    width = bounds["max"] or 0
    if width == 0:
        return pa.array([], pa.float64()), pa.nulls(positions, pa.float64())
    ragged = bounds["min"] < width
    starts = offsets.slice(0, positions)
    columns = []
    for j in range(width):
        index = pc.add(starts, pa.scalar(j, pa.int32())) if j else starts
        if bounds["min"] <= j:  # positions with ≤ j alternatives have no column j
            index = pc.if_else(pc.greater(counts, j), index, pa.scalar(None, pa.int32()))
        columns.append(pc.take(logprobs, index))
    peak = pc.max_element_wise(*columns, skip_nulls=True)  # null: no alternatives
    infinite = pc.any(pc.equal(logprobs, -math.inf)).as_py()
    shift = peak
    no_mass = None
    if infinite:
        no_mass = pc.fill_null(pc.equal(peak, -math.inf), False)
        shift = pc.if_else(no_mass, 0.0, peak)
    z = weighted = None
    for column in columns:
        d = pc.subtract(column, shift)
        e = pc.exp(d)
        term = pc.multiply(e, d)
        if infinite:  # 0 * -inf would be NaN; such terms contribute nothing
            term = pc.if_else(pc.greater(e, 0.0), term, 0.0)
        if ragged:
            e = pc.fill_null(e, 0.0)
            term = pc.fill_null(term, 0.0)
        z = e if z is None else pc.add(z, e)
        weighted = term if weighted is None else pc.add(weighted, term)
    entropy = pc.max_element_wise(
        pc.subtract(pc.ln(z), pc.divide(weighted, z)), 0.0, skip_nulls=False
    )
    parent = pc.list_parent_indices(pa.ListArray.from_arrays(offsets, logprobs))
    probs = pc.divide(pc.exp(pc.subtract(logprobs, pc.take(shift, parent))), pc.take(z, parent))
    if no_mass is not None and pc.any(no_mass).as_py():
        # Every alternative at -inf: share the position uniformly, as renormalise does.
        count = counts.cast(pa.float64())
        entropy = pc.if_else(no_mass, pc.ln(count), entropy)
        probs = pc.if_else(pc.take(no_mass, parent), pc.divide(1.0, pc.take(count, parent)), probs)
    if bounds["min"] == 0:
        entropy = pc.if_else(pc.is_null(peak), pa.scalar(None, pa.float64()), entropy)
    return probs, entropy


def _mean_by_run(tokens: pa.ListArray, values: pa.Array) -> list[float | None]:
    """Per run, the mean of its positions' non-null values (None if none).

    A hash aggregation keyed by run: each run's positions are summed in order,
    whatever else is in the chunk."""
    means: list[float | None] = [None] * len(tokens)
    if len(values) == 0:
        return means
    grouped = (
        pa.table({"run": pc.list_parent_indices(tokens), "value": values})
        .group_by("run", use_threads=False)
        .aggregate([("value", "mean")])
    )
    for run, mean in zip(
        grouped["run"].to_pylist(), grouped["value_mean"].to_pylist(), strict=True
    ):
        means[run] = mean
    return means


def estimated_bytes(run: CompletedRun) -> int:
    """A rough, data-only estimate of a run's in-memory size across the five
    tables; bounds a row group's memory. Deterministic: it decides row-group
    boundaries, which must not depend on anything but the runs."""
    size = 256 + 2 * len(run.output_text) + 32 * (len(run.messages) + len(run.variables))
    for message in run.messages:
        size += len(message.content)
    for key, value in run.variables.items():
        size += len(key) + len(value)
    if run.tokens is not None:
        size += 24 * len(run.tokens.tokens) + 48 * len(run.tokens.top_tokens)
    return size


class ChunkTables:
    """The five tables for the kept runs of a chunk, and a way to cut them into
    row-group segments by example."""

    def __init__(
        self,
        runs: Sequence[CompletedRun],
        kept: Sequence[int],
        scores: Sequence[Mapping[str, float]],
        logprobs: LogprobColumns,
    ) -> None:
        sel = [runs[i] for i in kept]
        ids = pa.array([r.run_id for r in sel], pa.string())
        soft = pa.array([logprobs.has_soft_labels[i] for i in kept], pa.bool_())
        model = pa.array([r.model for r in sel], pa.string())
        provider = pa.array([r.provider for r in sel], pa.string())
        finish = pa.array([r.finish_reason for r in sel], pa.string())
        nested = logprobs.take(kept)

        examples = pa.Table.from_arrays(
            [
                ids,
                pa.array([r.batch_id for r in sel], pa.string()),
                pa.array([r.template_id for r in sel], pa.string()),
                pa.array([r.template_version for r in sel], pa.int32()),
                provider,
                model,
                finish,
                pa.array([has_logprobs(r) for r in sel], pa.bool_()),
                soft,
            ],
            schema=EXAMPLES,
        )
        inputs = pa.Table.from_arrays([ids, _variables(sel), _messages(sel)], schema=INPUTS)
        teacher = pa.Table.from_arrays(
            [
                ids,
                provider,
                model,
                finish,
                pa.array([r.input_tokens for r in sel], pa.int64()),
                pa.array([r.output_tokens for r in sel], pa.int64()),
                pa.array([r.latency_ms for r in sel], pa.int64()),
                nested["tokens"],
                nested["logprobs"],
                nested["top_counts"],
                nested["top_tokens"],
                nested["top_logprobs"],
            ],
            schema=TEACHER,
        )

        names: list[str] = []
        values: list[float] = []
        sources: list[str] = []
        score_ids: list[str] = []
        score_rows = [0]
        for run, run_scores in zip(sel, scores, strict=True):
            for name, value, source in score_sources(run_scores, run):
                names.append(name)
                values.append(value)
                sources.append(source)
            score_ids.extend([run.run_id] * len(run_scores))
            score_rows.append(len(names))
        y_scores = _list(
            _offsets(score_rows),
            pa.StructArray.from_arrays(
                [pa.array(names, pa.string()), pa.array(values, pa.float64())], fields=list(SCORE)
            ),
        )
        targets = pa.Table.from_arrays(
            [
                ids,
                model,
                pa.array([r.output_text for r in sel], pa.string()),
                nested["y_probs"],
                y_scores,
                soft,
            ],
            schema=TARGETS,
        )
        score_table = pa.Table.from_arrays(
            [
                pa.array(score_ids, pa.string()),
                pa.array(names, pa.string()),
                pa.array(values, pa.float64()),
                pa.array(sources, pa.string()),
            ],
            schema=SCORES,
        )
        self.tables = {
            "examples": examples,
            "inputs": inputs,
            "teacher": teacher,
            "targets": targets,
            "scores": score_table,
        }
        self._score_rows = score_rows

    def slice(self, start: int, stop: int) -> dict[str, pa.Table]:
        """The tables for examples [start, stop) of this chunk's kept runs."""
        out = {
            name: table.slice(start, stop - start)
            for name, table in self.tables.items()
            if name != "scores"
        }
        first, last = self._score_rows[start], self._score_rows[stop]
        out["scores"] = self.tables["scores"].slice(first, last - first)
        return out


def _variables(runs: Sequence[CompletedRun]) -> pa.Array:
    keys: list[str] = []
    values: list[str] = []
    offsets = [0]
    for run in runs:
        for key, value in sorted(run.variables.items()):
            keys.append(key)
            values.append(value)
        offsets.append(len(keys))
    pairs = pa.StructArray.from_arrays(
        [pa.array(keys, pa.string()), pa.array(values, pa.string())], fields=list(VARIABLE)
    )
    return _list(_offsets(offsets), pairs)


def _messages(runs: Sequence[CompletedRun]) -> pa.Array:
    roles: list[str] = []
    contents: list[str] = []
    offsets = [0]
    for run in runs:
        for message in run.messages:
            roles.append(message.role)
            contents.append(message.content)
        offsets.append(len(roles))
    structs = pa.StructArray.from_arrays(
        [pa.array(roles, pa.string()), pa.array(contents, pa.string())], fields=list(MESSAGE)
    )
    return _list(_offsets(offsets), structs)
