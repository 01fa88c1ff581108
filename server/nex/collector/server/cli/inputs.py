"""The JSONL input of ``batch create`` and ``batch add``, read and checked
against the template before anything is sent.

One JSON object per line, its keys the template's variables.
String values are sent as they are; any other value is sent JSON-encoded
(``3`` → ``"3"``, ``["a"]`` → ``'["a"]'``). An optional top-level
``"_request_id"`` key is the run's idempotency key (unique across the
collector: sending it again returns the run first created with it). Lines
without one get a key derived from the batch and the line's variables, so
sending the same file to the same batch again (``batch add``) creates only
the runs that are missing. Blank lines are skipped.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from nex.collector.client import PromptTemplate
from nex.collector.server.domain.limits import MAX_REQUEST_ID

from .errors import fail

__all__ = [
    "REQUEST_ID_KEY",
    "InputLine",
    "Inputs",
    "check_against_template",
    "parse_input_line",
    "read_inputs",
]

REQUEST_ID_KEY = "_request_id"
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True, slots=True)
class InputLine:
    """One run to create, from line ``line`` (1-based) of the input file."""

    line: int
    variables: dict[str, str]
    request_id: str | None = None


def _as_variable(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_input_line(number: int, raw: bytes) -> InputLine | str | None:
    """The run of one JSONL line, a problem in words, or None for a blank line."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return f"line {number}: not UTF-8 ({exc.reason} at byte {exc.start})"
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(obj, dict):
        return f"line {number}: expected a JSON object of variables, got {type(obj).__name__}"
    request_id = obj.pop(REQUEST_ID_KEY, None)
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        return f"line {number}: {REQUEST_ID_KEY} must be a non-empty string"
    if request_id is not None and len(request_id) > MAX_REQUEST_ID:
        return f"line {number}: {REQUEST_ID_KEY} is longer than {MAX_REQUEST_ID} characters"
    variables = {str(k): _as_variable(v) for k, v in obj.items()}
    return InputLine(number, variables, request_id)


def read_inputs(stream: BinaryIO) -> tuple[list[InputLine], list[str]]:
    """Every run of a JSONL stream, and the problems found (one per bad line)."""
    lines: list[InputLine] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(stream, start=1):
        parsed = parse_input_line(number, raw)
        if isinstance(parsed, str):
            problems.append(parsed)
        elif parsed is not None:
            if parsed.request_id is not None:
                if parsed.request_id in seen:
                    problems.append(
                        f"line {number}: {REQUEST_ID_KEY} {parsed.request_id!r} repeats "
                        f"line {seen[parsed.request_id]}"
                    )
                seen.setdefault(parsed.request_id, number)
            lines.append(parsed)
    return lines, problems


def check_against_template(lines: Sequence[InputLine], template: PromptTemplate) -> list[str]:
    """Lines whose variables are not exactly the template's declared ones."""
    declared = set(template.variables)
    problems = []
    for item in lines:
        missing = [v for v in template.variables if v not in item.variables]
        extra = sorted(set(item.variables) - declared)
        if missing:
            problems.append(f"line {item.line}: missing variables {', '.join(missing)}")
        if extra:
            problems.append(
                f"line {item.line}: variables {', '.join(extra)} are not declared by "
                f"template {template.name} v{template.version}"
            )
    return problems


_LINE = re.compile(r"^line (\d+):")


def _line_of(problem: str) -> int:
    match = _LINE.match(problem)
    return int(match.group(1)) if match else 0


def _read_file(path: str) -> tuple[list[InputLine], list[str]]:
    if path == "-":
        return read_inputs(sys.stdin.buffer)
    try:
        with Path(path).open("rb") as f:
            return read_inputs(f)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


class Inputs:
    """A JSONL file of runs, read once; checked against a template in the same
    report, so a JSON error on one line never hides a variable error on another."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines, self._problems = _read_file(path)
        if not self.lines and not self._problems:
            fail(f"{path}: no runs (the file is empty)")

    def check(self, template: PromptTemplate, *, note: str = "") -> list[InputLine]:
        """The runs, or exit 1 naming every bad line (nothing is sent)."""
        problems = sorted(
            [*self._problems, *check_against_template(self.lines, template)], key=_line_of
        )
        if problems:
            _fail_lines(self.path, problems, note)
        return self.lines


def _fail_lines(path: str, problems: Sequence[str], note: str = "") -> NoReturn:
    shown = list(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown.append(f"… and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    if note:
        shown.append(note)
    bad = len({_line_of(p) for p in problems})
    fail(f"{path}: {bad} bad line{'s' if bad != 1 else ''}; nothing was sent", shown)
