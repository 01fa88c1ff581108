"""Scores of completed runs, on hand-computed cases."""

from __future__ import annotations

import importlib.metadata
import math
from typing import Any

import pytest

from nex.collector.server.domain import scoring
from nex.collector.server.domain.scoring import (
    BOOLEAN_PROPERTIES,
    BUILTIN_SCORES,
    MetricError,
    MetricRegistry,
    compute_scores,
    length_chars,
    length_tokens,
    mean_entropy,
    mean_logprob,
    perplexity,
    position_entropy,
    score_sources,
)
from nex.collector.server.domain.teacher import CompletedRun, TokenLogprobs
from tests.unit.distill_factories import LN, make_run, positions

NO_LOGPROB_SCORES = {"finish_reason_length", "finish_reason_stop", "length_chars", "length_tokens"}


def two_tokens() -> TokenLogprobs:
    return positions(
        ("a", -1.0, [("a", LN(0.25)), ("b", LN(0.75))]),
        ("c", -3.0, [("c", LN(0.2)), ("d", LN(0.2))]),
    )


def test_lengths_count_characters_and_tokens() -> None:
    assert length_chars(make_run(output="héllo 🐱")) == 7
    assert length_tokens(make_run(tokens=two_tokens(), output_tokens=99)) == 2
    assert length_tokens(make_run(tokens=None, output_tokens=42)) == 42


def test_mean_logprob_and_perplexity() -> None:
    tokens = positions(("a", -1.0, []), ("b", -2.0, []), ("c", -3.0, []))
    assert mean_logprob(tokens) == pytest.approx(-2.0)
    assert perplexity(tokens) == pytest.approx(math.e**2)
    assert mean_logprob(None) is None and perplexity(None) is None
    assert mean_logprob(TokenLogprobs()) is None


def test_perplexity_overflows_to_infinity() -> None:
    assert perplexity(positions(("a", -1000.0, []))) == math.inf


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([LN(0.25)] * 4, LN(4)),  # uniform over four
        ([LN(0.25), LN(0.75)], -(0.25 * LN(0.25) + 0.75 * LN(0.75))),  # 0.5623351446…
        ([LN(0.2), LN(0.2)], LN(2)),  # renormalised over the alternatives given
        ([LN(0.1), LN(0.3)], -(0.25 * LN(0.25) + 0.75 * LN(0.75))),
        ([-0.3], 0.0),  # one alternative: certain
        ([-1000.0, -1000.0], LN(2)),  # stable far from 0
        ([0.0, -math.inf], 0.0),  # an impossible alternative adds nothing
        ([-math.inf, -math.inf], LN(2)),  # no mass at all: uniform, as renormalise does
    ],
)
def test_position_entropy(logprobs: list[float], expected: float) -> None:
    assert position_entropy(logprobs) == pytest.approx(expected, abs=1e-12)


def test_position_entropy_without_alternatives_is_none() -> None:
    assert position_entropy([]) is None


def test_mean_entropy_skips_positions_without_alternatives() -> None:
    tokens = positions(
        ("a", -0.1, [("a", LN(0.5)), ("b", LN(0.5))]),
        ("b", -0.2, [("b", -0.2)]),
        ("c", -0.3, []),
    )
    assert mean_entropy(tokens) == pytest.approx(LN(2) / 2)
    assert mean_entropy(positions(("a", -0.1, []))) is None
    assert mean_entropy(None) is None


def test_scores_of_a_run_with_logprobs() -> None:
    run = make_run(output="héllo", tokens=two_tokens(), finish_reason="length")
    scores = compute_scores(run)
    h1 = -(0.25 * LN(0.25) + 0.75 * LN(0.75))
    assert scores == pytest.approx(
        {
            "finish_reason_length": 1.0,
            "finish_reason_stop": 0.0,
            "length_chars": 5.0,
            "length_tokens": 2.0,
            "mean_entropy": (h1 + LN(2)) / 2,
            "mean_logprob": -2.0,
            "perplexity": math.e**2,
        }
    )
    assert list(scores) == sorted(scores)


def test_runs_without_logprobs_lack_the_scores_that_need_them() -> None:
    run = make_run(tokens=None, output_tokens=7, scores={"judge": 0.5})
    scores = compute_scores(run)
    assert set(scores) == NO_LOGPROB_SCORES | {"judge"}
    assert scores["length_tokens"] == 7.0
    for absent in ("mean_entropy", "mean_logprob", "perplexity"):
        assert absent not in scores


def test_logprobs_without_alternatives_give_no_entropy() -> None:
    scores = compute_scores(make_run(tokens=positions(("a", -0.5, []), ("b", -1.5, []))))
    assert scores["mean_logprob"] == pytest.approx(-1.0)
    assert "mean_entropy" not in scores


def test_precedence_builtin_then_posted_then_metric() -> None:
    metrics = MetricRegistry(
        {"judge": lambda run: 0.0, "words": lambda run: 2, "skip": lambda run: None}
    )
    run = make_run(output="two words", scores={"judge": 0.9, "perplexity": 123.0, "nan": math.nan})
    scores = compute_scores(run, metrics)
    assert scores["judge"] == 0.9  # posted beats a metric
    assert "perplexity" not in scores  # posted never replaces a built-in (no logprobs here)
    assert scores["words"] == 2.0
    assert "skip" not in scores and "nan" not in scores
    sources = {name: source for name, _, source in score_sources(scores, run)}
    assert sources == {
        "finish_reason_length": "builtin",
        "finish_reason_stop": "builtin",
        "judge": "posted",
        "length_chars": "builtin",
        "length_tokens": "builtin",
        "words": "metric",
    }


def test_precomputed_entropy_is_used() -> None:
    run = make_run(tokens=two_tokens())
    assert compute_scores(run, entropy=0.123)["mean_entropy"] == 0.123
    assert "mean_entropy" not in compute_scores(run, entropy=None)


def test_boolean_properties() -> None:
    anthropic = make_run(tokens=None, finish_reason="length", output="")
    assert {name: p(anthropic) for name, p in BOOLEAN_PROPERTIES.items()} == {
        "finish_reason_stop": False,
        "finish_reason_length": True,
        "has_logprobs": False,
        "has_output": False,
    }
    openai = make_run(tokens=two_tokens())
    assert BOOLEAN_PROPERTIES["has_logprobs"](openai) and BOOLEAN_PROPERTIES["has_output"](openai)
    assert not BOOLEAN_PROPERTIES["has_logprobs"](make_run(tokens=TokenLogprobs()))


def test_registry_refuses_bad_registrations() -> None:
    registry = MetricRegistry()
    registry.register("ok", lambda run: 1.0)
    with pytest.raises(ValueError, match="built-in"):
        registry.register("perplexity", lambda run: 1.0)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ok", lambda run: 2.0)
    with pytest.raises(ValueError, match="non-empty"):
        registry.register("", lambda run: 2.0)
    with pytest.raises(TypeError, match="not callable"):
        registry.register("x", 3)  # type: ignore[arg-type]  # deliberately not callable
    assert registry.names == ("ok",) and "ok" in registry and len(registry) == 1
    assert set(BUILTIN_SCORES) >= {"mean_entropy", "perplexity"}


def test_a_failing_metric_names_itself_and_the_run() -> None:
    def broken(run: CompletedRun) -> float:
        raise ZeroDivisionError("boom")

    with pytest.raises(MetricError, match=r"'broken' failed on run run-7") as info:
        compute_scores(make_run("run-7"), MetricRegistry({"broken": broken}))
    assert info.value.metric == "broken"
    with pytest.raises(MetricError, match="returned str"):
        text: Any = lambda run: "1"  # noqa: E731 - a deliberately ill-typed metric
        compute_scores(make_run(), MetricRegistry({"text": text}))


def answer_length(run: CompletedRun) -> float:
    """A metric plug-in, loaded through an entry point below."""
    return float(len(run.output_text.split()))


def fake_entry_points(monkeypatch: pytest.MonkeyPatch, *specs: tuple[str, str]) -> None:
    eps = [
        importlib.metadata.EntryPoint(name, value, scoring.METRICS_ENTRY_POINT_GROUP)
        for name, value in specs
    ]

    def entry_points(**params: Any) -> list[importlib.metadata.EntryPoint]:
        assert params == {"group": scoring.METRICS_ENTRY_POINT_GROUP}
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_metrics_load_from_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_entry_points(monkeypatch, ("words", "tests.unit.test_scoring:answer_length"))
    registry = MetricRegistry.from_entry_points()
    assert registry.names == ("words",)
    assert compute_scores(make_run(output="a b c"), registry)["words"] == 3.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            ("gone", "no_such_module_for_nex:metric"),
            r"plug-in 'gone' \(no_such_module_for_nex:metric\) failed to load",
        ),
        (("notfn", "math:pi"), r"plug-in 'notfn' \(math:pi\) is unusable: .*not callable"),
        (
            ("perplexity", "tests.unit.test_scoring:answer_length"),
            r"plug-in 'perplexity' .* built-in",
        ),
    ],
)
def test_a_broken_plugin_is_named(
    monkeypatch: pytest.MonkeyPatch, spec: tuple[str, str], message: str
) -> None:
    fake_entry_points(monkeypatch, spec)
    with pytest.raises(MetricError, match=message) as info:
        MetricRegistry.from_entry_points()
    assert info.value.metric == spec[0]
