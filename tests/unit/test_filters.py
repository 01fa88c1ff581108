"""Filters: validation with field paths, RE2 safety, verdicts and drop order."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nex.collector.server.domain.errors import FieldViolation, InvalidArgument
from nex.collector.server.domain.filters import (
    BooleanFilter,
    EntropyFilter,
    Filter,
    FilterChain,
    InvalidFiltersError,
    LengthFilter,
    RegexFilter,
    ScoreFilter,
    describe,
    filter_from_dict,
    filter_to_dict,
    validate_filters,
)
from nex.collector.server.domain.scoring import compute_scores
from nex.collector.server.domain.teacher import CompletedRun
from tests.unit.distill_factories import LN, make_run, positions


def scored(run: CompletedRun) -> tuple[CompletedRun, dict[str, float]]:
    return run, compute_scores(run)


def keeps(f: Filter, run: CompletedRun) -> bool:
    return FilterChain([f]).first_rejecting(*scored(run)) is None


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


# --- validation ---------------------------------------------------------------------


def test_valid_filters_have_no_violations() -> None:
    assert (
        validate_filters(
            [
                LengthFilter(min_chars=0, max_chars=0),
                RegexFilter(r"^\d+\s*(?i:cats)$", must_match=True),
                EntropyFilter(max=2.5),
                BooleanFilter("finish_reason_stop", True),
                ScoreFilter("judge", min=0.5),
            ]
        )
        == []
    )


def test_each_violation_names_its_field() -> None:
    violations = validate_filters(
        [
            LengthFilter(),
            LengthFilter(min_chars=-1, max_chars=5),
            LengthFilter(min_chars=10, max_chars=5),
            RegexFilter(""),
            EntropyFilter(min=-0.5),
            BooleanFilter("is_good"),
            ScoreFilter(" ", min=1.0),
            ScoreFilter("judge", min=2.0, max=1.0),
            ScoreFilter("judge", min=float("nan")),
        ]
    )
    assert fields(violations) == [
        "filters[0].length",
        "filters[1].length.min_chars",
        "filters[2].length.min_chars",
        "filters[3].regex.pattern",
        "filters[4].entropy.min",
        "filters[5].boolean.name",
        "filters[6].score.name",
        "filters[7].score.min",
        "filters[8].score.min",
    ]
    assert "finish_reason_stop" in violations[5].description  # lists the known names


def test_field_prefix_is_configurable() -> None:
    assert fields(validate_filters([LengthFilter()], "request.filters")) == [
        "request.filters[0].length"
    ]


@pytest.mark.parametrize("pattern", [r"(a)\1", r"a(?=b)", r"(?<!x)y", "(unclosed", "x" * 5000])
def test_patterns_re2_cannot_compile_are_invalid(pattern: str) -> None:
    (violation,) = validate_filters([ScoreFilter("judge", min=0.0), RegexFilter(pattern)])
    assert violation.field == "filters[1].regex.pattern"
    assert violation.description


def test_invalid_filters_cannot_make_a_chain() -> None:
    with pytest.raises(InvalidFiltersError) as info:
        FilterChain([RegexFilter(r"(a)\1")])
    assert isinstance(info.value, InvalidArgument)
    assert fields(info.value.violations) == ["filters[0].regex.pattern"]


# --- verdicts -----------------------------------------------------------------------


def test_length_bounds_are_inclusive_characters() -> None:
    f = LengthFilter(min_chars=3, max_chars=5)
    assert [keeps(f, make_run(output=text)) for text in ["ab", "abc", "héllo", "abcdef"]] == [
        False,
        True,
        True,
        False,
    ]
    assert keeps(LengthFilter(max_chars=0), make_run(output=""))


def test_regex_searches_anywhere_in_the_output() -> None:
    run = make_run(output="The answer is 42.\nDone")
    assert keeps(RegexFilter(r"\d+", must_match=True), run)
    assert not keeps(RegexFilter(r"^\d+$", must_match=True), run)
    assert keeps(RegexFilter(r"(?m)^Done$", must_match=True), run)
    assert not keeps(RegexFilter(r"(?i)answer", must_match=False), run)
    assert keeps(RegexFilter("é", must_match=True), make_run(output="café"))


def test_catastrophic_pattern_finishes_fast() -> None:
    run = make_run(output="a" * 200_000 + "b")
    chain = FilterChain(
        [RegexFilter(r"(a+)+$", must_match=True), RegexFilter(r"(x+x+)+y", must_match=False)]
    )
    started = time.perf_counter()
    assert chain.first_rejecting(run, {}) == 0  # ends in "b": no match, dropped
    assert FilterChain([RegexFilter(r"(a+)+b$")]).first_rejecting(run, {}) is None
    assert time.perf_counter() - started < 1.0


def test_entropy_filter_drops_runs_without_entropy() -> None:
    uniform = make_run(tokens=positions(("a", -0.7, [("a", LN(0.5)), ("b", LN(0.5))])))
    f = EntropyFilter(min=0.6, max=0.7)  # ln 2 = 0.693…
    assert keeps(f, uniform)
    assert not keeps(EntropyFilter(max=0.5), uniform)
    assert not keeps(EntropyFilter(min=0.0), make_run(tokens=None))
    assert not keeps(EntropyFilter(min=0.0), make_run(tokens=positions(("a", -0.1, []))))


def test_boolean_filter() -> None:
    stopped, cut = make_run(finish_reason="stop"), make_run(finish_reason="length")
    assert keeps(BooleanFilter("finish_reason_stop", True), stopped)
    assert not keeps(BooleanFilter("finish_reason_stop", True), cut)
    assert keeps(BooleanFilter("finish_reason_length", False), stopped)
    assert not keeps(BooleanFilter("has_logprobs", True), make_run(tokens=None))
    assert keeps(BooleanFilter("has_output", False), make_run(output=""))


def test_score_filter_drops_runs_without_the_score() -> None:
    f = ScoreFilter("judge", min=0.5, max=1.0)
    assert keeps(f, make_run(scores={"judge": 0.5}))
    assert not keeps(f, make_run(scores={"judge": 0.49}))
    assert not keeps(f, make_run(scores={}))
    assert keeps(ScoreFilter("length_chars", max=5), make_run(output="12345"))


def test_first_rejecting_filter_counts_the_drop() -> None:
    chain = FilterChain(
        [
            LengthFilter(min_chars=3),
            RegexFilter("cat", must_match=True),
            ScoreFilter("judge", min=0.5),
        ]
    )
    runs = [
        make_run(output="cat", scores={"judge": 0.9}),  # kept
        make_run(output="x", scores={}),  # fails all three: counts for filter 0
        make_run(output="dog", scores={}),  # fails 1 and 2: counts for filter 1
        make_run(output="a cat", scores={"judge": 0.1}),  # fails 2
    ]
    assert [chain.first_rejecting(*scored(run)) for run in runs] == [None, 0, 1, 2]


def test_explain_spells_out_each_verdict() -> None:
    chain = FilterChain(
        [LengthFilter(min_chars=10), EntropyFilter(max=1.0), ScoreFilter("judge", min=0.5)]
    )
    text = chain.explain(*scored(make_run(output="short", scores={"judge": 0.7})))
    assert text.splitlines() == [
        "filters[0] length(min_chars=10): drop (output has 5 chars, wanted [10, inf])",
        "filters[1] entropy(max=1.0): drop (no entropy (no top logprobs))",
        "filters[2] score(name='judge', min=0.5): keep (score 'judge' is 0.7, wanted [0.5, inf])",
    ]
    assert FilterChain([]).explain(*scored(make_run())) == "no filters: kept"
    assert chain.verdict(2, *scored(make_run(scores={}))).reason == "no score 'judge'"


# --- words and JSON -------------------------------------------------------------------

ALL: list[tuple[Filter, str, dict[str, Any]]] = [
    (LengthFilter(min_chars=10, max_chars=2000), "length(min_chars=10, max_chars=2000)",
     {"length": {"min_chars": 10, "max_chars": 2000}}),
    (LengthFilter(min_chars=10), "length(min_chars=10)", {"length": {"min_chars": 10}}),
    (RegexFilter(r"\d+'", must_match=False), "regex(pattern=\"\\\\d+'\", must_match=False)",
     {"regex": {"pattern": r"\d+'", "must_match": False}}),
    (EntropyFilter(min=0.5), "entropy(min=0.5)", {"entropy": {"min": 0.5}}),
    (BooleanFilter("has_logprobs", True), "boolean(name='has_logprobs', value=True)",
     {"boolean": {"name": "has_logprobs", "value": True}}),
    (ScoreFilter("judge", min=0.0, max=1.0), "score(name='judge', min=0.0, max=1.0)",
     {"score": {"name": "judge", "min": 0.0, "max": 1.0}}),
]  # fmt: skip


@pytest.mark.parametrize(("f", "words", "as_dict"), ALL)
def test_describe_and_json_round_trip(f: Filter, words: str, as_dict: dict[str, Any]) -> None:
    assert describe(f) == words
    assert filter_to_dict(f) == as_dict
    assert filter_from_dict(as_dict) == f


def test_from_dict_accepts_integral_json_numbers() -> None:
    assert filter_from_dict({"entropy": {"max": 2}}) == EntropyFilter(max=2.0)
    assert filter_from_dict({"length": {"min_chars": 3.0}}) == LengthFilter(min_chars=3)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"length": {}, "regex": {}},
        {"colour": {}},
        {"length": []},
        {"length": {"min_chars": "3"}},
        {"length": {"min_chars": 1.5}},
        {"length": {"minimum": 3}},
        {"regex": {"pattern": 3}},
        {"boolean": {"name": "has_output", "value": "yes"}},
        {"score": {"name": "x", "min": True}},
    ],
)
def test_from_dict_rejects_malformed_filters(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        filter_from_dict(bad)
