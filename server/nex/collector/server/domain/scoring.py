"""Scores of a completed run: built-in measures, custom metric plug-ins and
scores posted by callers.

Every score is a float. A score that cannot be computed for a run (perplexity
of a run without logprobs, say) is *absent* from the run's score dict, never
zero, so filters and statistics cannot mistake "unknown" for "perfect".

Which value wins when names collide (documented in docs/dataset-format.md):

1. Built-in scores (``BUILTIN_SCORES``) are facts derived from the teacher's
   output and the filters are defined on them, so they always win. Their
   names are reserved: plug-ins cannot register them, a posted score under
   one is ignored (even where the built-in is absent, e.g. no perplexity
   without logprobs), and the API should refuse to accept such scores.
2. Scores posted by callers (``run.scores``, e.g. from a judge) come next:
   they are explicit, per-run data.
3. Custom metric plug-ins fill in the remaining names.

NaN from any source counts as absent.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum

from nex.collector.server.domain.teacher import CompletedRun, TokenLogprobs

__all__ = [
    "BOOLEAN_PROPERTIES",
    "BUILTIN_SCORES",
    "METRICS_ENTRY_POINT_GROUP",
    "Metric",
    "MetricError",
    "MetricRegistry",
    "builtin_scores",
    "compute_scores",
    "finish_reason_length",
    "finish_reason_stop",
    "has_logprobs",
    "has_output",
    "length_chars",
    "length_tokens",
    "mean_entropy",
    "mean_logprob",
    "perplexity",
    "position_entropy",
    "score_sources",
]

METRICS_ENTRY_POINT_GROUP = "nex_collector.metrics"

Metric = Callable[[CompletedRun], "float | None"]
"""A custom metric: returns the run's value, or None when it does not apply."""


# --- built-in measures ---------------------------------------------------------------


def length_chars(run: CompletedRun) -> int:
    """Length of the output in characters (Unicode code points)."""
    return len(run.output_text)


def length_tokens(run: CompletedRun) -> int:
    """Output tokens: counted from the logprobs when there are some, otherwise
    the provider's reported usage."""
    if run.tokens is not None:
        return len(run.tokens)
    return run.output_tokens


def mean_logprob(tokens: TokenLogprobs | None) -> float | None:
    """Mean logprob of the sampled tokens; None without logprobs.

    ``math.fsum`` makes the sum exact, so the value does not depend on the
    Python version's float summation (3.12 changed ``sum``)."""
    if tokens is None or not tokens.logprobs:
        return None
    return math.fsum(tokens.logprobs) / len(tokens.logprobs)


def perplexity(tokens: TokenLogprobs | None) -> float | None:
    """exp(-mean logprob); None without logprobs, +inf when it overflows."""
    mean = mean_logprob(tokens)
    return None if mean is None else _perplexity_of(mean)


def _perplexity_of(mean_lp: float) -> float:
    try:
        return math.exp(-mean_lp)
    except OverflowError:
        return math.inf


def position_entropy(logprobs: Sequence[float]) -> float | None:
    """Entropy (nats) of one position's top alternatives, renormalised over the
    alternatives given: p_i = exp(l_i) / sum_j exp(l_j), H = -sum p_i ln p_i.

    Computed as ln z - sum e_i (l_i - m) / z with m = max l and e_i = exp(l_i - m),
    which stays finite for very negative logprobs. None when there are no
    alternatives."""
    if not logprobs:
        return None
    m = max(logprobs)
    if m == -math.inf:
        return math.log(len(logprobs))  # no mass at all: treated as uniform, like renormalise
    z = 0.0
    weighted = 0.0
    for lp in logprobs:
        e = math.exp(lp - m)
        if e > 0.0:
            z += e
            weighted += e * (lp - m)
    return max(0.0, math.log(z) - weighted / z)


def mean_entropy(tokens: TokenLogprobs | None) -> float | None:
    """Mean over positions of the position entropy; positions without
    alternatives are skipped; None when no position has any."""
    if tokens is None:
        return None
    values: list[float] = []
    start = 0
    for count in tokens.top_counts:
        end = start + count
        h = position_entropy(tokens.top_logprobs[start:end])
        if h is not None:
            values.append(h)
        start = end
    if not values:
        return None
    return math.fsum(values) / len(values)


def finish_reason_stop(run: CompletedRun) -> bool:
    """The teacher stopped on its own (end of turn or a stop sequence)."""
    return run.finish_reason == "stop"


def finish_reason_length(run: CompletedRun) -> bool:
    """The output was cut at max_tokens."""
    return run.finish_reason == "length"


def has_logprobs(run: CompletedRun) -> bool:
    """The teacher returned per-token logprobs for at least one token."""
    return run.tokens is not None and len(run.tokens) > 0


def has_output(run: CompletedRun) -> bool:
    return run.output_text != ""


BOOLEAN_PROPERTIES: Mapping[str, Callable[[CompletedRun], bool]] = {
    "finish_reason_stop": finish_reason_stop,
    "finish_reason_length": finish_reason_length,
    "has_logprobs": has_logprobs,
    "has_output": has_output,
}
"""Boolean properties a BooleanFilter may test, by name."""

BUILTIN_SCORES: tuple[str, ...] = (
    "finish_reason_length",
    "finish_reason_stop",
    "length_chars",
    "length_tokens",
    "mean_entropy",
    "mean_logprob",
    "perplexity",
)
"""Names of the built-in scores (reserved: plug-ins and posted scores cannot
replace them)."""

_BUILTIN_SET = frozenset(BUILTIN_SCORES)


# --- plug-ins ---------------------------------------------------------------------------


class MetricError(Exception):
    """A custom metric failed to load or to evaluate; the message names it."""

    def __init__(self, metric: str, message: str) -> None:
        super().__init__(message)
        self.metric = metric


class MetricRegistry:
    """Custom metrics by name, evaluated in name order."""

    def __init__(self, metrics: Mapping[str, Metric] | None = None) -> None:
        self._metrics: dict[str, Metric] = {}
        for name, metric in (metrics or {}).items():
            self.register(name, metric)

    def register(self, name: str, metric: Metric) -> None:
        if not name or name.strip() != name:
            raise ValueError(f"metric name {name!r} must be non-empty without surrounding spaces")
        if name in _BUILTIN_SET:
            raise ValueError(f"metric name {name!r} is a built-in score and cannot be replaced")
        if name in self._metrics:
            raise ValueError(f"metric {name!r} is already registered")
        if not callable(metric):
            raise TypeError(f"metric {name!r} is not callable: {metric!r}")
        self._metrics[name] = metric

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._metrics))

    def __len__(self) -> int:
        return len(self._metrics)

    def __contains__(self, name: object) -> bool:
        return name in self._metrics

    def evaluate(self, run: CompletedRun) -> dict[str, float]:
        """Every metric's value for the run; metrics returning None or NaN are
        left out. A metric that raises or returns a non-number raises MetricError."""
        out: dict[str, float] = {}
        for name in self.names:
            try:
                value = self._metrics[name](run)
            except Exception as exc:
                raise MetricError(
                    name, f"metric {name!r} failed on run {run.run_id}: {exc!r}"
                ) from exc
            if value is None:
                continue
            if not isinstance(value, int | float):
                raise MetricError(
                    name,
                    f"metric {name!r} returned {type(value).__name__} for run "
                    f"{run.run_id}; expected a float or None",
                )
            number = float(value)
            if not math.isnan(number):
                out[name] = number
        return out

    @classmethod
    def from_entry_points(cls, group: str = METRICS_ENTRY_POINT_GROUP) -> MetricRegistry:
        """Loads every entry point of `group`; each must be a Metric and its entry
        point name becomes the score name. Raises MetricError naming the plug-in
        that fails to load, is not callable, or clashes with another name."""
        registry = cls()
        entry_points = sorted(
            importlib.metadata.entry_points(group=group), key=lambda ep: (ep.name, ep.value)
        )
        for ep in entry_points:
            where = f"metric plug-in {ep.name!r} ({ep.value})"
            try:
                metric = ep.load()
            except Exception as exc:
                raise MetricError(ep.name, f"{where} failed to load: {exc!r}") from exc
            try:
                registry.register(ep.name, metric)
            except (TypeError, ValueError) as exc:
                raise MetricError(ep.name, f"{where} is unusable: {exc}") from exc
        return registry


# --- all scores of a run -------------------------------------------------------------------


class _Auto(Enum):
    AUTO = "auto"


def builtin_scores(
    run: CompletedRun, *, entropy: float | _Auto | None = _Auto.AUTO
) -> dict[str, float]:
    """The built-in scores that apply to the run, keys sorted. `entropy` lets a
    caller that computed the mean entropy in bulk (the dataset builder) pass it in.

    Inlined rather than composed of the functions above: it runs once per run
    of every dataset build."""
    tokens = run.tokens
    scores: dict[str, float] = {
        "finish_reason_length": 1.0 if run.finish_reason == "length" else 0.0,
        "finish_reason_stop": 1.0 if run.finish_reason == "stop" else 0.0,
        "length_chars": float(len(run.output_text)),
        "length_tokens": float(run.output_tokens if tokens is None else len(tokens.tokens)),
    }
    if entropy is _Auto.AUTO:
        entropy = mean_entropy(tokens)
    if entropy is not None and entropy == entropy:  # not NaN
        scores["mean_entropy"] = entropy
    if tokens is not None and tokens.logprobs:
        mean = math.fsum(tokens.logprobs) / len(tokens.logprobs)
        if mean == mean:
            scores["mean_logprob"] = mean
            scores["perplexity"] = _perplexity_of(mean)
    return scores


def compute_scores(
    run: CompletedRun,
    metrics: MetricRegistry | None = None,
    *,
    entropy: float | _Auto | None = _Auto.AUTO,
) -> dict[str, float]:
    """All scores of a run, keys sorted: built-ins, then posted scores, then
    metric plug-ins for names not taken yet (see the module docstring)."""
    merged = builtin_scores(run, entropy=entropy)
    extra = False
    for name, value in run.scores.items():
        if name not in _BUILTIN_SET and not math.isnan(value):
            merged[name] = float(value)
            extra = True
    if metrics is not None and len(metrics):
        for name, value in metrics.evaluate(run).items():
            if name not in merged:
                merged[name] = value
                extra = True
    return dict(sorted(merged.items())) if extra else merged


def score_sources(
    scores: Mapping[str, float], run: CompletedRun
) -> Iterable[tuple[str, float, str]]:
    """(name, value, source) per score, source being "builtin", "posted" or
    "metric" by the precedence rules above."""
    for name, value in scores.items():
        if name in _BUILTIN_SET:
            source = "builtin"
        elif name in run.scores and not math.isnan(run.scores[name]):
            source = "posted"
        else:
            source = "metric"
        yield name, value, source
