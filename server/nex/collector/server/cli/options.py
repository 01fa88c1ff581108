"""Options several commands share: --quiet (only the new id on stdout),
--link-evidence, --label KEY=VALUE, and the mock teacher's default model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from .consoles import out

__all__ = [
    "DEFAULT_MOCK_MODEL",
    "LinkEvidenceOpt",
    "QuietOpt",
    "parse_labels",
    "print_id",
    "quiet_output",
]

DEFAULT_MOCK_MODEL = "mock-teacher"
"""The model a mock-teacher batch calls when no --model is given."""

LinkEvidenceOpt = Annotated[
    bool,
    typer.Option(
        "--link-evidence",
        help="with --context-ref: link it to the NEX context once finished (integrated mode)",
    ),
]

QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="print only the new id, for scripts: ID=$(nex-collector … -q)",
    ),
]


def quiet_output(quiet: bool) -> None:
    """With --quiet, human output (tables, progress) is off; errors still go to stderr."""
    out.quiet = quiet


def print_id(quiet: bool, new_id: str) -> None:
    """The new id alone on stdout, with --quiet."""
    if quiet:
        print(new_id, flush=True)


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` options as a mapping."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--label")
        labels[key.strip()] = value.strip()
    return labels
