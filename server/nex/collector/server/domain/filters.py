"""Dataset filters: which completed runs become examples.

A run is kept when every filter keeps it; the filters apply in order and a
dropped run is counted against the *first* filter that drops it, which is
what the manifest's per-filter drop counts report.

Regexes are caller input, so they run on RE2 (linear time, bounded memory):
a pattern RE2 cannot compile, e.g. one with a backreference, is invalid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import re2

from nex.collector.server.domain.errors import FieldViolation, InvalidArgument, clip, quote
from nex.collector.server.domain.limits import MAX_PATTERN_LENGTH
from nex.collector.server.domain.scoring import BOOLEAN_PROPERTIES
from nex.collector.server.domain.teacher import CompletedRun

__all__ = [
    "MAX_PATTERN_LENGTH",
    "REGEX_MAX_MEM",
    "BooleanFilter",
    "EntropyFilter",
    "FieldViolation",
    "Filter",
    "FilterChain",
    "InvalidFiltersError",
    "LengthFilter",
    "RegexFilter",
    "ScoreFilter",
    "Verdict",
    "compile_pattern",
    "describe",
    "filter_from_dict",
    "filter_to_dict",
    "validate_filters",
]

REGEX_MAX_MEM = 8 << 20  # bytes RE2 may use per compiled pattern


@dataclass(frozen=True, slots=True)
class LengthFilter:
    """Keeps runs whose output has min_chars ≤ characters ≤ max_chars."""

    min_chars: int | None = None
    max_chars: int | None = None


@dataclass(frozen=True, slots=True)
class RegexFilter:
    """Keeps runs whose output contains a match (must_match) or has none."""

    pattern: str
    must_match: bool = True


@dataclass(frozen=True, slots=True)
class EntropyFilter:
    """Keeps runs whose mean token entropy (nats) is within [min, max]; runs
    without logprobs have no entropy and are dropped."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class BooleanFilter:
    """Keeps runs whose boolean property `name` equals `value`."""

    name: str
    value: bool = True


@dataclass(frozen=True, slots=True)
class ScoreFilter:
    """Keeps runs whose score `name` is within [min, max]; runs without that
    score are dropped."""

    name: str
    min: float | None = None
    max: float | None = None


Filter: TypeAlias = LengthFilter | RegexFilter | EntropyFilter | BooleanFilter | ScoreFilter

_KIND: dict[type[Any], str] = {
    LengthFilter: "length",
    RegexFilter: "regex",
    EntropyFilter: "entropy",
    BooleanFilter: "boolean",
    ScoreFilter: "score",
}


class InvalidFiltersError(InvalidArgument):
    """Raised by FilterChain for filters that validate_filters rejects."""


# --- validation ----------------------------------------------------------------------------


def _regex_options() -> re2.Options:
    options = re2.Options()
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False
    options.never_capture = True  # only "is there a match"; lets RE2 use its fastest engines
    return options


def compile_pattern(pattern: str) -> Any:
    """Compiles a caller's pattern with RE2; raises ValueError with RE2's reason."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"pattern is longer than {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, _regex_options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"not a valid RE2 pattern: {clip(str(reason))}") from None


def _check_bounds(
    path: str, low_name: str, low: float | None, high_name: str, high: float | None
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if low is None and high is None:
        out.append(FieldViolation(path, f"set {low_name} or {high_name} (or both)"))
    for name, value in ((low_name, low), (high_name, high)):
        if value is not None and math.isnan(value):
            out.append(FieldViolation(f"{path}.{name}", "must be a number, not NaN"))
    if low is not None and high is not None and low > high:
        out.append(
            FieldViolation(f"{path}.{low_name}", f"{low_name} ({low}) exceeds {high_name} ({high})")
        )
    return out


def _non_negative(path: str, fields: dict[str, float | None], what: str) -> list[FieldViolation]:
    return [
        FieldViolation(f"{path}.{name}", what)
        for name, value in fields.items()
        if value is not None and value < 0
    ]


def _violations(path: str, f: Filter) -> list[FieldViolation]:
    path = f"{path}.{_KIND[type(f)]}"
    if isinstance(f, LengthFilter):
        return _check_bounds(path, "min_chars", f.min_chars, "max_chars", f.max_chars) + (
            _non_negative(path, {"min_chars": f.min_chars, "max_chars": f.max_chars}, "must be ≥ 0")
        )
    if isinstance(f, RegexFilter):
        if not f.pattern:
            return [FieldViolation(f"{path}.pattern", "must not be empty")]
        try:
            compile_pattern(f.pattern)
        except ValueError as exc:
            return [FieldViolation(f"{path}.pattern", str(exc))]
        return []
    if isinstance(f, EntropyFilter):
        return _check_bounds(path, "min", f.min, "max", f.max) + _non_negative(
            path, {"min": f.min, "max": f.max}, "entropy is ≥ 0"
        )
    if isinstance(f, BooleanFilter):
        if f.name not in BOOLEAN_PROPERTIES:
            known = ", ".join(sorted(BOOLEAN_PROPERTIES))
            return [
                FieldViolation(f"{path}.name", f"unknown property {quote(f.name)}; one of {known}")
            ]
        return []
    out = []
    if not f.name.strip():
        out.append(FieldViolation(f"{path}.name", "must not be empty"))
    return out + _check_bounds(path, "min", f.min, "max", f.max)


def validate_filters(filters: Sequence[Filter], field: str = "filters") -> list[FieldViolation]:
    """Every problem with the filters, as field paths like ``filters[2].regex.pattern``."""
    out: list[FieldViolation] = []
    for i, f in enumerate(filters):
        if type(f) not in _KIND:
            out.append(
                FieldViolation(f"{field}[{i}]", "set one of length, regex, entropy, boolean, score")
            )
            continue
        out.extend(_violations(f"{field}[{i}]", f))
    return out


# --- words and JSON --------------------------------------------------------------------------


def describe(f: Filter) -> str:
    """The filter in words, e.g. ``length(min_chars=10, max_chars=2000)``; unset
    bounds are left out."""
    fields = filter_to_dict(f)[_KIND[type(f)]]
    args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return f"{_KIND[type(f)]}({args})"


_FIELD_ORDER: dict[str, tuple[str, ...]] = {
    "length": ("min_chars", "max_chars"),
    "regex": ("pattern", "must_match"),
    "entropy": ("min", "max"),
    "boolean": ("name", "value"),
    "score": ("name", "min", "max"),
}


def filter_to_dict(f: Filter) -> dict[str, dict[str, Any]]:
    """``{"length": {"min_chars": 10}}``: the protobuf JSON shape (oneof name as
    the key), unset bounds left out."""
    kind = _KIND[type(f)]
    fields = {name: getattr(f, name) for name in _FIELD_ORDER[kind]}
    return {kind: {k: v for k, v in fields.items() if v is not None}}


def _number(kind: str, name: str, value: object) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{kind}.{name} must be a number, got {value!r}")
    return value


def _integer(kind: str, name: str, value: object) -> int | None:
    number = _number(kind, name, value)
    if number is None:
        return None
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{kind}.{name} must be an integer, got {value!r}")
    return int(number)


def _real(kind: str, name: str, value: object) -> float | None:
    number = _number(kind, name, value)
    return None if number is None else float(number)


def filter_from_dict(data: Mapping[str, Any]) -> Filter:
    """The inverse of filter_to_dict; raises ValueError on a malformed dict."""
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ValueError(f"a filter is a one-key object naming its kind, got {data!r}")
    ((kind, fields),) = data.items()
    if kind not in _FIELD_ORDER:
        raise ValueError(f"unknown filter kind {kind!r}")
    if not isinstance(fields, Mapping):
        raise ValueError(f"{kind} must be an object, got {fields!r}")
    unknown = set(fields) - set(_FIELD_ORDER[kind])
    if unknown:
        raise ValueError(f"{kind} has unknown fields {sorted(unknown)}")

    def text(name: str) -> str:
        value = fields.get(name, "")
        if not isinstance(value, str):
            raise ValueError(f"{kind}.{name} must be a string, got {value!r}")
        return value

    def flag(name: str, default: bool) -> bool:
        value = fields.get(name, default)
        if not isinstance(value, bool):
            raise ValueError(f"{kind}.{name} must be a boolean, got {value!r}")
        return value

    def integer(name: str) -> int | None:
        return _integer(kind, name, fields.get(name))

    def real(name: str) -> float | None:
        return _real(kind, name, fields.get(name))

    match kind:
        case "length":
            return LengthFilter(integer("min_chars"), integer("max_chars"))
        case "regex":
            return RegexFilter(text("pattern"), flag("must_match", True))
        case "entropy":
            return EntropyFilter(real("min"), real("max"))
        case "boolean":
            return BooleanFilter(text("name"), flag("value", True))
        case _:
            return ScoreFilter(text("name"), real("min"), real("max"))


# --- evaluation ------------------------------------------------------------------------------


class Verdict(NamedTuple):
    keep: bool
    reason: str


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _bounds(low: float | None, high: float | None) -> str:
    return f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"


class FilterChain:
    """Validated filters, ready to run: regexes are compiled once.

    ``first_rejecting`` is the fast path used by the dataset builder;
    ``explain`` spells out every filter's verdict for one run (debugging, CLI).
    """

    def __init__(self, filters: Sequence[Filter]) -> None:
        violations = validate_filters(filters)
        if violations:
            raise InvalidFiltersError(violations)
        self.filters: tuple[Filter, ...] = tuple(filters)
        self._patterns: dict[int, Any] = {
            i: compile_pattern(f.pattern)
            for i, f in enumerate(self.filters)
            if isinstance(f, RegexFilter)
        }

    def __len__(self) -> int:
        return len(self.filters)

    def descriptions(self) -> list[str]:
        return [describe(f) for f in self.filters]

    def keeps(self, index: int, run: CompletedRun, scores: Mapping[str, float]) -> bool:
        f = self.filters[index]
        match f:
            case LengthFilter(min_chars=low, max_chars=high):
                return _within(len(run.output_text), low, high)
            case RegexFilter(must_match=must_match):
                found = self._patterns[index].search(run.output_text) is not None
                return found == must_match
            case EntropyFilter(min=low, max=high):
                entropy = scores.get("mean_entropy")
                return entropy is not None and _within(entropy, low, high)
            case BooleanFilter(name=name, value=value):
                return BOOLEAN_PROPERTIES[name](run) == value
            case ScoreFilter(name=name, min=low, max=high):
                score = scores.get(name)
                return score is not None and _within(score, low, high)
        raise AssertionError(f"unknown filter {f!r}")  # pragma: no cover

    def first_rejecting(self, run: CompletedRun, scores: Mapping[str, float]) -> int | None:
        """Index of the first filter that drops the run; None when all keep it."""
        for i in range(len(self.filters)):
            if not self.keeps(i, run, scores):
                return i
        return None

    def verdict(self, index: int, run: CompletedRun, scores: Mapping[str, float]) -> Verdict:
        """Whether filter `index` keeps the run, and why."""
        f = self.filters[index]
        keep = self.keeps(index, run, scores)
        match f:
            case LengthFilter(min_chars=low, max_chars=high):
                why = f"output has {len(run.output_text)} chars, wanted {_bounds(low, high)}"
            case RegexFilter(must_match=must_match):
                found = self._patterns[index].search(run.output_text) is not None
                why = f"pattern {'found' if found else 'not found'}, must_match={must_match}"
            case EntropyFilter(min=low, max=high):
                entropy = scores.get("mean_entropy")
                why = (
                    "no entropy (no top logprobs)"
                    if entropy is None
                    else f"mean entropy {entropy:.6g} nats, wanted {_bounds(low, high)}"
                )
            case BooleanFilter(name=name, value=value):
                why = f"{name} is {BOOLEAN_PROPERTIES[name](run)}, wanted {value}"
            case ScoreFilter(name=name, min=low, max=high):
                score = scores.get(name)
                why = (
                    f"no score {name!r}"
                    if score is None
                    else f"score {name!r} is {score:.6g}, wanted {_bounds(low, high)}"
                )
        return Verdict(keep, why)

    def explain(self, run: CompletedRun, scores: Mapping[str, float]) -> str:
        """One line per filter, e.g.
        ``filters[0] length(min_chars=10): drop (output has 3 chars, wanted [10, inf])``."""
        lines = []
        for i, f in enumerate(self.filters):
            keep, why = self.verdict(i, run, scores)
            lines.append(f"filters[{i}] {describe(f)}: {'keep' if keep else 'drop'} ({why})")
        return "\n".join(lines) if lines else "no filters: kept"
