"""Soft-label targets."""

from __future__ import annotations

import math

import pytest

from nex.collector.server.domain.targets import (
    extract_targets,
    has_soft_labels,
    renormalise,
    soft_labels,
)
from nex.collector.server.domain.teacher import TokenLogprobs
from tests.unit.distill_factories import LN, make_run, positions


def test_renormalise_over_the_alternatives_given() -> None:
    assert renormalise([LN(0.2), LN(0.2)]) == pytest.approx([0.5, 0.5])
    assert renormalise([LN(0.1), LN(0.3)]) == pytest.approx([0.25, 0.75])
    assert renormalise([-1000.0, -1000.0 + LN(3)]) == pytest.approx([0.25, 0.75])
    assert renormalise([0.0, -math.inf]) == [1.0, 0.0]
    assert renormalise([-math.inf] * 4) == [0.25] * 4
    assert renormalise([]) == []
    assert math.fsum(renormalise([-0.1, -2.3, -4.5, -7.0])) == pytest.approx(1.0)


def test_soft_labels_pair_tokens_with_probabilities() -> None:
    tokens = positions(
        ("Hi", -0.1, [("Hi", LN(0.6)), ("Hello", LN(0.2))]),
        ("!", -0.2, []),
        (" there", -0.3, [(" there", LN(0.9))]),
    )
    labels = soft_labels(tokens)
    assert labels is not None
    assert [[t for t, _ in pos] for pos in labels] == [["Hi", "Hello"], [], [" there"]]
    assert [[p for _, p in pos] for pos in labels] == [
        pytest.approx([0.75, 0.25]),
        [],
        pytest.approx([1.0]),
    ]


def test_no_soft_labels_without_alternatives() -> None:
    assert soft_labels(None) is None
    assert soft_labels(positions(("a", -0.1, []), ("b", -0.2, []))) is None
    assert not has_soft_labels(TokenLogprobs())
    assert has_soft_labels(positions(("a", -0.1, [("a", -0.1)])))


def test_targets_of_a_run() -> None:
    run = make_run(
        output="Hi",
        model="gpt-x",
        tokens=positions(("Hi", -0.1, [("Hi", LN(0.5)), ("Yo", LN(0.5))])),
    )
    targets = extract_targets(run, {"z": 1.0, "a": 2.0})
    assert targets.y_text == "Hi"
    assert targets.y_probs is not None
    assert [[t for t, _ in pos] for pos in targets.y_probs] == [["Hi", "Yo"]]
    assert [p for _, p in targets.y_probs[0]] == pytest.approx([0.5, 0.5])
    assert list(targets.y_scores) == ["a", "z"]
    assert targets.has_soft_labels and targets.teacher_model == "gpt-x"


def test_targets_of_a_run_without_logprobs() -> None:
    targets = extract_targets(make_run(tokens=None, provider="anthropic"), {"length_chars": 11.0})
    assert targets.y_probs is None and not targets.has_soft_labels
    assert targets.y_scores == {"length_chars": 11.0}
