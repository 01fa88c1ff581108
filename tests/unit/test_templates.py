"""The template domain, in this process: bounded operators, constant checks,
bounded output, and the compile cache of a sandbox process."""

from __future__ import annotations

from datetime import UTC, datetime

import jinja2
import pytest

from nex.collector.server.domain.templates import (
    MAX_INT_BITS,
    MAX_RENDERED_CHARS,
    LimitExceeded,
    PromptTemplate,
    RenderFailed,
    bounded_range,
    checked_multiply,
    checked_power,
    render,
    template_problems,
)
from nex.collector.server.sandbox.child import CompiledCache


def template(user: str, system: str = "") -> PromptTemplate:
    return PromptTemplate("tpl_1", "t", 1, system, user, ("x",), None, datetime.now(UTC))


def test_power_is_bounded_by_the_size_of_its_result() -> None:
    assert checked_power(2, MAX_INT_BITS - 1) == 2 ** (MAX_INT_BITS - 1)
    assert checked_power(1, 10**100) == 1  # cheap whatever the exponent
    assert checked_power(-1, 10**100 + 1) == -1
    assert checked_power(10, -(10**9)) == 0.0
    with pytest.raises(LimitExceeded):
        checked_power(2, MAX_INT_BITS + 1)
    with pytest.raises(LimitExceeded):
        checked_power(10, 10**9)


def test_multiply_is_bounded_for_ints_strings_and_lists() -> None:
    assert checked_multiply("ab", 3) == "ababab"
    assert checked_multiply(3, [1]) == [1, 1, 1]
    assert checked_multiply("a", -5) == ""
    with pytest.raises(LimitExceeded):
        checked_multiply("a", 10**9)
    with pytest.raises(LimitExceeded):
        checked_multiply(10**9, [1, 2])
    big = 2 ** (MAX_INT_BITS // 2 + 1)
    with pytest.raises(LimitExceeded):
        checked_multiply(big, big)


def test_range_is_bounded() -> None:
    assert len(bounded_range(0, 20_000, 2)) == 10_000
    with pytest.raises(LimitExceeded):
        bounded_range(10_001)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("{{ 10 ** 10000000 }}", "beyond the limits"),
        ("{{ ('a' * 1000) * 1000000 }}", "beyond the limits"),
        ("{{ x } }", "syntax error"),
        ("{{ y }}", "undeclared variables y"),
        ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "RecursionError"),
    ],
)
def test_problems_of_a_template_source(source: str, words: str) -> None:
    (problem,) = template_problems(source, ["x"])
    assert words in problem


def test_a_template_that_is_only_hostile_at_render_time_is_accepted() -> None:
    assert template_problems("{{ 10 ** (x|int) }}{% if false %}{{ 1/0 }}{% endif %}", ["x"]) == []


def test_render_names_the_source_and_the_cause() -> None:
    with pytest.raises(RenderFailed) as caught:
        render(template("{{ 10 ** (x|int) }}", system="hi {{ x }}"), {"x": "99999999"})
    assert (caught.value.index, caught.value.field) == (0, "user_template")
    assert caught.value.description.startswith("LimitExceeded: **")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (f"{{{{ 'a' * {MAX_RENDERED_CHARS // 2 + 1} }}}}{{{{ x }}}}" * 2, "characters"),
        ("{{ '\\x00' }}", "NUL"),
        ("{{ '\\ud800' }}", "surrogate"),
        ("{{ lipsum(1000000) }}", "lipsum"),
    ],
)
def test_render_output_is_storable_and_bounded(source: str, words: str) -> None:
    with pytest.raises(RenderFailed) as caught:
        render(template(source), {"x": "1"})
    assert words in caught.value.description


def test_compile_cache_keeps_only_compiled_sources_and_stays_bounded() -> None:
    cache = CompiledCache(max_entries=3, max_chars=1000)
    with pytest.raises(jinja2.TemplateSyntaxError):
        cache.get("{{ x")
    assert len(cache) == 0
    for i in range(5):
        cache.get(f"{{{{ x }}}} {i}")
    assert len(cache) == 3
    cache.get("y" * 999)
    assert len(cache) == 1
