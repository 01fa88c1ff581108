"""The ``--filter KIND:key=value,…`` mini-language of ``dataset build``
(see ``FILTER_HELP``): parsing it into the client's filters and writing
them back (``format_filter``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import typer

from nex.collector.client import (
    BooleanFilter,
    EntropyFilter,
    Filter,
    LengthFilter,
    RegexFilter,
    ScoreFilter,
)

__all__ = [
    "FILTER_HELP",
    "FilterSyntaxError",
    "format_filter",
    "parse_filter",
    "parse_filters",
]

FILTER_HELP = """Filters: --filter KIND:key=value,… (repeat; a run is kept when all keep it)

  length:min_chars=10,max_chars=2000      output characters (or min=, max=)
  regex:pattern=^Answer,must_match=true   RE2 search (must_match=false keeps
                                          the runs that do not match)
  entropy:min=0.1,max=2.5                 mean token entropy, in nats
  boolean:name=finish_reason_stop         or finish_reason_length,
                                          has_logprobs, has_output; value=true
  score:name=mean_logprob,min=-1.5,max=0  any score: length_chars,
                                          length_tokens, perplexity,
                                          mean_logprob, mean_entropy, posted
                                          and plug-in scores

Shorthands: regex:^Answer · boolean:finish_reason_stop (value=true) ·
score:perplexity,max=20. A regex pattern may contain commas and '=':
only ',must_match=' starts a new key."""

_KEYS: dict[str, dict[str, type]] = {
    "length": {"min_chars": int, "max_chars": int},
    "regex": {"pattern": str, "must_match": bool},
    "entropy": {"min": float, "max": float},
    "boolean": {"name": str, "value": bool},
    "score": {"name": str, "min": float, "max": float},
}
_ALIASES: dict[str, dict[str, str]] = {"length": {"min": "min_chars", "max": "max_chars"}}
_FIRST_KEY = {"regex": "pattern", "boolean": "name", "score": "name"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class FilterSyntaxError(ValueError):
    """A --filter that does not follow the mini-syntax; the message says why."""


def _convert(kind: str, key: str, raw: str, kind_type: type) -> object:
    value = raw if key == "pattern" else raw.strip()
    if kind_type is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise FilterSyntaxError(f"{kind}: {key} must be true or false, got {value!r}")
    if kind_type is str:
        return value
    try:
        number = kind_type(value)
    except ValueError:
        raise FilterSyntaxError(
            f"{kind}: {key} must be {'an integer' if kind_type is int else 'a number'}, "
            f"got {value!r}"
        ) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise FilterSyntaxError(f"{kind}: {key} must be a finite number")
    return number


def _split(kind: str, body: str) -> dict[str, str]:
    keys = {**{k: k for k in _KEYS[kind]}, **_ALIASES.get(kind, {})}
    alternatives = "|".join(sorted(map(re.escape, keys), key=len, reverse=True))
    parts = re.split(rf",(?=\s*(?:{alternatives})\s*=)", body)
    values: dict[str, str] = {}
    for i, part in enumerate(parts):
        match = re.match(rf"\s*({alternatives})\s*=(.*)$", part, re.DOTALL)
        if match:
            key, raw = keys[match.group(1)], match.group(2)
        elif i == 0 and kind in _FIRST_KEY and part.strip():
            key, raw = _FIRST_KEY[kind], part
        else:
            known = ", ".join(_KEYS[kind])
            raise FilterSyntaxError(f"{kind}: cannot read {part!r} (keys: {known})")
        if key in values:
            raise FilterSyntaxError(f"{kind}: {key} is given twice")
        values[key] = raw
    return values


def parse_filter(spec: str) -> Filter:
    """``KIND:key=value,…`` → the client's filter (see ``FILTER_HELP``)."""
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _KEYS:
        raise FilterSyntaxError(
            f"unknown filter kind {kind!r} in {spec!r}; use one of {', '.join(_KEYS)}"
        )
    if not sep or not body.strip():
        raise FilterSyntaxError(f"{kind}: give its settings, e.g. {_example(kind)}")
    args = {
        key: _convert(kind, key, raw, _KEYS[kind][key]) for key, raw in _split(kind, body).items()
    }
    return _build(kind, args)


def _example(kind: str) -> str:
    return {
        "length": "length:min_chars=10,max_chars=2000",
        "regex": "regex:pattern=^Answer",
        "entropy": "entropy:max=2.5",
        "boolean": "boolean:name=finish_reason_stop,value=true",
        "score": "score:name=mean_logprob,min=-1.5",
    }[kind]


def _build(kind: str, args: Mapping[str, Any]) -> Filter:
    if kind in ("regex", "boolean", "score"):
        required = _FIRST_KEY[kind]
        if not args.get(required):
            raise FilterSyntaxError(f"{kind}: {required} is required, e.g. {_example(kind)}")
    bounds = [k for k in args if k.startswith(("min", "max"))]
    if kind in ("length", "entropy", "score") and not bounds:
        raise FilterSyntaxError(f"{kind}: give a min and/or a max, e.g. {_example(kind)}")
    low = args.get("min", args.get("min_chars"))
    high = args.get("max", args.get("max_chars"))
    if low is not None and high is not None and low > high:
        raise FilterSyntaxError(f"{kind}: the minimum {low} is above the maximum {high}")
    builders: dict[str, type] = {
        "length": LengthFilter,
        "regex": RegexFilter,
        "entropy": EntropyFilter,
        "boolean": BooleanFilter,
        "score": ScoreFilter,
    }
    result: Filter = builders[kind](**args)
    return result


def parse_filters(specs: Sequence[str]) -> list[Filter]:
    """Every --filter, or a usage error (exit 2) naming the bad one."""
    try:
        return [parse_filter(s) for s in specs]
    except FilterSyntaxError as exc:
        raise typer.BadParameter(str(exc), param_hint="--filter") from None


def _num(value: float | int) -> str:
    return f"{value:g}"


def format_filter(f: Filter) -> str:
    """A filter in the command-line syntax (what ``parse_filter`` reads)."""
    if isinstance(f, RegexFilter):
        return f"regex:pattern={f.pattern},must_match={str(f.must_match).lower()}"
    if isinstance(f, BooleanFilter):
        return f"boolean:name={f.name},value={str(f.value).lower()}"
    pairs: list[tuple[str, str | float | None]]
    if isinstance(f, LengthFilter):
        pairs, kind = [("min_chars", f.min_chars), ("max_chars", f.max_chars)], "length"
    elif isinstance(f, EntropyFilter):
        pairs, kind = [("min", f.min), ("max", f.max)], "entropy"
    else:
        pairs, kind = [("name", f.name), ("min", f.min), ("max", f.max)], "score"
    body = ",".join(
        f"{k}={v if isinstance(v, str) else _num(v)}" for k, v in pairs if v is not None
    )
    return f"{kind}:{body}"
