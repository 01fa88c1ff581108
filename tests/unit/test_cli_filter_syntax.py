"""The --filter mini-syntax: what it reads, that it writes back what it
reads, and why a bad filter is refused."""

from __future__ import annotations

import pytest

from nex.collector.client import (
    BooleanFilter,
    EntropyFilter,
    LengthFilter,
    RegexFilter,
    ScoreFilter,
)
from nex.collector.server.cli.filter_syntax import FilterSyntaxError, format_filter, parse_filter


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("length:min_chars=10,max_chars=2000", LengthFilter(10, 2000)),
        ("length:min=5", LengthFilter(min_chars=5)),
        ("regex:pattern=^Answer,must_match=true", RegexFilter("^Answer", True)),
        ("regex:pattern=a{1,3}|b,must_match=false", RegexFilter("a{1,3}|b", False)),
        ("regex:x=y", RegexFilter("x=y")),
        ("entropy:max=2.5", EntropyFilter(max=2.5)),
        ("boolean:name=finish_reason_stop,value=true", BooleanFilter("finish_reason_stop", True)),
        ("boolean:has_logprobs,value=no", BooleanFilter("has_logprobs", False)),
        ("score:name=mean_logprob,min=-1.5", ScoreFilter("mean_logprob", min=-1.5)),
        ("SCORE:perplexity,max=20", ScoreFilter("perplexity", max=20.0)),
    ],
)
def test_filter_mini_syntax(spec: str, expected: object) -> None:
    parsed = parse_filter(spec)
    assert parsed == expected
    assert parse_filter(format_filter(parsed)) == parsed


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("size:max=3", "unknown filter kind"),
        ("length", "give its settings"),
        ("length:min_chars=ten", "integer"),
        ("length:foo=1", "cannot read"),
        ("entropy:min=1,min=2", "twice"),
        ("entropy:min=3,max=1", "above the maximum"),
        ("score:min=1", "name is required"),
        ("score:mean_logprob", "min and/or a max"),
        ("boolean:name=x,value=maybe", "true or false"),
    ],
)
def test_bad_filters_say_why(spec: str, words: str) -> None:
    with pytest.raises(FilterSyntaxError, match=words):
        parse_filter(spec)
