"""Training targets of one example: the teacher's text, its soft labels and
its scores.

Soft labels (``y_probs``) are, per output token, the teacher's top-k
alternatives with their probabilities renormalised over the alternatives
given, so each position sums to 1. A run without top logprobs (Anthropic, or
top_logprobs=0) has no soft labels: ``y_probs`` is None, never empty lists
pretending to be a distribution.

The dataset builder computes the same numbers column-wise for speed; the tests
hold the two to agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nex.collector.server.domain.teacher import CompletedRun, TokenLogprobs

__all__ = ["Targets", "extract_targets", "has_soft_labels", "renormalise", "soft_labels"]


@dataclass(frozen=True, slots=True)
class Targets:
    y_text: str
    y_probs: list[list[tuple[str, float]]] | None  # per position: (token, probability)
    y_scores: dict[str, float]
    has_soft_labels: bool
    teacher_model: str


def has_soft_labels(tokens: TokenLogprobs | None) -> bool:
    """True when at least one position has a top alternative."""
    return tokens is not None and len(tokens.top_logprobs) > 0


def renormalise(logprobs: Sequence[float]) -> list[float]:
    """softmax over the given logprobs: exp(l_i - m) / sum_j exp(l_j - m), m = max.

    Empty in, empty out. If every logprob is -inf (no probability mass at all)
    the alternatives share it uniformly rather than producing NaN."""
    if not logprobs:
        return []
    m = max(logprobs)
    if m == -math.inf:
        return [1.0 / len(logprobs)] * len(logprobs)
    weights = [math.exp(lp - m) for lp in logprobs]
    z = 0.0
    for w in weights:  # left to right, as the dataset builder sums
        z += w
    return [w / z for w in weights]


def soft_labels(tokens: TokenLogprobs | None) -> list[list[tuple[str, float]]] | None:
    """Per output position, the top alternatives as (token, probability)."""
    if not has_soft_labels(tokens):
        return None
    assert tokens is not None
    out: list[list[tuple[str, float]]] = []
    start = 0
    for count in tokens.top_counts:
        end = start + count
        probs = renormalise(tokens.top_logprobs[start:end])
        out.append(list(zip(tokens.top_tokens[start:end], probs, strict=True)))
        start = end
    return out


def extract_targets(run: CompletedRun, scores: Mapping[str, float]) -> Targets:
    """The targets of one run, given its scores (see scoring.compute_scores)."""
    probs = soft_labels(run.tokens)
    return Targets(
        y_text=run.output_text,
        y_probs=probs,
        y_scores=dict(sorted(scores.items())),
        has_soft_labels=probs is not None,
        teacher_model=run.model,
    )
