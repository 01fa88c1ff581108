"""The five Parquet tables of a dataset (see docs/dataset-format.md).

Every table starts with ``example_id`` (the run id), on which they join.
``teacher`` keeps the raw logprobs in the collector's columnar layout (flat
alternatives plus a count per position: cheap to write, lossless);
``targets`` holds the training view, nested per position.
``examples``, ``inputs``, ``teacher`` and ``targets`` hold one row per
example, in the same order; ``scores`` is long ("tidy"): one row per
(example, score), names in sorted order within an example, so datasets with
different custom metrics share one schema.

Key/value lists are written sorted by key and nothing time- or randomness-dependent goes
into the files, so the same runs give byte-identical files.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "EXAMPLES",
    "FILE_NAMES",
    "FORMAT_VERSION",
    "INPUTS",
    "MESSAGE",
    "PARTS_FORMAT_VERSION",
    "SCHEMAS",
    "SCORE",
    "SCORES",
    "SOFT_LABEL",
    "TARGETS",
    "TEACHER",
    "VARIABLE",
    "list_of",
]

FORMAT_VERSION = 1
"""The layout of a dataset built in one go: one file per table (``examples.parquet``...)."""
PARTS_FORMAT_VERSION = 2
"""The layout of a dataset built in parts: ``<table>/part-00000.parquet``, ... per table.
The tables' schemas (and their ``nex.collector.format_version`` metadata) are those of 1."""

SOFT_LABEL = pa.struct([("token", pa.string()), ("prob", pa.float64())])
"""One top alternative with its probability renormalised over the position's
alternatives (they sum to 1)."""

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])

VARIABLE = pa.struct([("key", pa.string()), ("value", pa.string())])
SCORE = pa.struct([("key", pa.string()), ("value", pa.float64())])
"""Key/value pairs are lists of structs sorted by key rather than Arrow maps:
Hugging Face datasets cannot load map columns (huggingface/datasets#5612).
DuckDB turns them into maps with ``map_from_entries``."""


def list_of(item: pa.DataType) -> pa.ListType:
    """A list type whose item field is named "element", as Parquet names it, so
    that a schema read back from a file equals the one written."""
    return pa.list_(pa.field("element", item))


def _schema(table: str, fields: list[pa.Field], doc: str) -> pa.Schema:
    metadata = {
        "nex.collector.table": table,
        "nex.collector.format_version": str(FORMAT_VERSION),
        "nex.collector.doc": doc,
    }
    return pa.schema(fields, metadata=metadata)


def _id() -> pa.Field:
    return pa.field("example_id", pa.string(), nullable=False)


EXAMPLES = _schema(
    "examples",
    [
        _id(),
        pa.field("batch_id", pa.string(), nullable=False),
        pa.field("template_id", pa.string(), nullable=False),
        pa.field("template_version", pa.int32(), nullable=False),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("teacher_model", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("has_logprobs", pa.bool_(), nullable=False),
        pa.field("has_soft_labels", pa.bool_(), nullable=False),
    ],
    "One row per example: where it came from and what it has.",
)

INPUTS = _schema(
    "inputs",
    [
        _id(),
        pa.field("variables", list_of(VARIABLE), nullable=False),
        pa.field("messages", list_of(MESSAGE), nullable=False),
    ],
    "The prompt: template variables (keys sorted) and the rendered messages.",
)

TEACHER = _schema(
    "teacher",
    [
        _id(),
        pa.field("provider", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.int64(), nullable=False),
        pa.field("tokens", list_of(pa.string())),
        pa.field("logprobs", list_of(pa.float64())),
        pa.field("top_counts", list_of(pa.int32())),
        pa.field("top_tokens", list_of(pa.string())),
        pa.field("top_logprobs", list_of(pa.float64())),
    ],
    "The teacher's raw per-token logprobs, columnar: position i's alternatives are the "
    "next top_counts[i] entries of top_tokens / top_logprobs. Null without logprobs.",
)

TARGETS = _schema(
    "targets",
    [
        _id(),
        pa.field("teacher_model", pa.string(), nullable=False),
        pa.field("y_text", pa.string(), nullable=False),
        pa.field("y_probs", list_of(list_of(SOFT_LABEL))),
        pa.field("y_scores", list_of(SCORE), nullable=False),
        pa.field("has_soft_labels", pa.bool_(), nullable=False),
    ],
    "Training targets: text, soft labels per token (null without), scores.",
)

SCORES = _schema(
    "scores",
    [
        _id(),
        pa.field("name", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ],
    "One row per (example, score); source is builtin, posted or metric.",
)

SCHEMAS: dict[str, pa.Schema] = {
    "examples": EXAMPLES,
    "inputs": INPUTS,
    "teacher": TEACHER,
    "targets": TARGETS,
    "scores": SCORES,
}
"""Table name → schema, in manifest order."""

FILE_NAMES: dict[str, str] = {table: f"{table}.parquet" for table in SCHEMAS}
