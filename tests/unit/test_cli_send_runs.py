"""Sending a file's runs: chunks that fit the server's request limit, and a
rejected chunk's field violations named by file line."""

from __future__ import annotations

import grpc

from nex.collector.client import FieldViolation, InvalidArgumentError
from nex.collector.server.cli.inputs import InputLine
from nex.collector.server.cli.send_runs import CHUNK_BYTES, chunked, violations_by_line


def test_field_violations_map_back_to_file_lines() -> None:
    chunk = [InputLine(10, {}), InputLine(12, {}), InputLine(15, {})]
    exc = InvalidArgumentError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        field_violations=[
            FieldViolation("runs[2].variables", "missing variables style"),
            FieldViolation("batch_id", "required"),
        ],
    )
    assert violations_by_line(exc, chunk) == [
        "line 15 (variables): missing variables style",
        "batch_id: required",
    ]


def test_runs_are_sent_in_chunks_cut_by_count_and_by_bytes() -> None:
    """Each BatchCreateRuns stays well under the server's request size limit."""
    small = [InputLine(i, {"x": "a"}) for i in range(5)]
    assert [len(c) for c in chunked(small, 2)] == [2, 2, 1]
    big = [InputLine(i, {"x": "b" * (CHUNK_BYTES // 3)}) for i in range(7)]
    assert [len(c) for c in chunked(big, 1000)] == [2, 2, 2, 1]
    huge = [InputLine(1, {"x": "a"}), InputLine(2, {"x": "c" * CHUNK_BYTES}), small[0]]
    assert [[i.line for i in c] for c in chunked(huge, 1000)] == [[1], [2], [0]]
