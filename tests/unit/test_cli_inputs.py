"""Reading a JSONL file of runs: line numbers, values encoded as strings,
every bad line reported at once."""

from __future__ import annotations

import io

from nex.collector.server.cli.inputs import InputLine, read_inputs


def test_read_inputs_numbers_lines_and_encodes_values() -> None:
    text = (
        '{"topic": "tides", "style": "short", "_request_id": "q-1"}\n'
        "\n"
        '{"topic": "x", "n": 3, "tags": ["a"], "ok": true}\n'
    )
    lines, problems = read_inputs(io.BytesIO(text.encode()))
    assert problems == []
    assert lines == [
        InputLine(1, {"topic": "tides", "style": "short"}, "q-1"),
        InputLine(3, {"topic": "x", "n": "3", "tags": '["a"]', "ok": "true"}, None),
    ]


def test_read_inputs_reports_every_bad_line() -> None:
    text = (
        '{"a": "1"}\n{"a": \n[1]\n{"a": "2", "_request_id": 7}\n'
        '{"_request_id": "r"}\n{"_request_id": "r"}\n'
    )
    _, problems = read_inputs(io.BytesIO(text.encode()))
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4", "line 6"]
    assert "repeats line 5" in problems[-1]
