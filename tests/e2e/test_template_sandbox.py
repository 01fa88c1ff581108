"""Hostile templates through the shipped client against a real server: each is
refused with INVALID_ARGUMENT naming the run (or the template field) and the
cause, leaves nothing behind, and never stops the server from answering."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nex.collector.client import (
    Client,
    CollectorError,
    DeadlineExceededError,
    InvalidArgumentError,
    connect,
)
from nex.collector.server.testing import CollectorEnvironment
from tests.conftest import unique
from tests.support.backing import Backing
from tests.support.collector import collector_settings
from tests.support.health import check_health, probing_health

# A process past its CPU limit is killed by the kernel; on a loaded host the wall
# clock limit may come first. Either way the sandbox refused it.
LIMIT_CAUSES = ("exceeded the CPU time limit", "took longer than")
NESTED_LOOPS = (
    "{% for i in range(10000) %}{% for j in range(10000) %}{{ '' }}{% endfor %}{% endfor %}"
)


@pytest.fixture(scope="module")
def sandboxed(
    backing: Backing, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CollectorEnvironment]:
    """A server whose template sandbox has small limits, so hostile cases end fast."""
    settings = collector_settings(
        backing,
        Path(tmp_path_factory.mktemp("sandbox")),
        TEMPLATE_CPU_S=1,
        TEMPLATE_MEMORY_MB=512,
        TEMPLATE_PROCESSES=2,
    )
    with CollectorEnvironment(settings, work=False) as running:
        yield running


@pytest.fixture(scope="module")
def sc(sandboxed: CollectorEnvironment) -> Iterator[Client]:
    with connect(sandboxed.address, token=sandboxed.token) as c:
        yield c


def batch_of(client: Client, user_template: str, variables: list[str] | None = None) -> str:
    template = client.create_template(
        unique("hostile"), user_template=user_template, variables=variables or ["x"]
    )
    return client.create_batch(unique("b"), template.id, "mock", "mock-1").id


def refused_run(client: Client, batch_id: str, runs: list[dict[str, str]]) -> dict[str, str]:
    """The violations of a refused BatchCreateRuns; it must have created nothing."""
    with pytest.raises(InvalidArgumentError) as caught:
        client.create_runs(batch_id, runs)
    assert list(client.list_runs(batch_id)) == []
    return {v.field: v.description for v in caught.value.field_violations}


def _prompt(client: Client, batch_id: str, runs: list[dict[str, str]]) -> str:
    """The rendered user message of the first run created (BatchCreateRuns
    answers with ids only; GetRun has the prompt)."""
    return client.get_run(client.create_runs(batch_id, runs)[0].id).messages[0].content


def test_a_power_of_a_huge_variable_names_the_run(sc: Client) -> None:
    batch_id = batch_of(sc, "{{ 10 ** (x|int) }}")
    violations = refused_run(sc, batch_id, [{"x": "3"}, {"x": "100000000"}])
    assert list(violations) == ["runs[1].variables"]
    assert "user_template" in violations["runs[1].variables"]
    assert "**" in violations["runs[1].variables"]
    assert _prompt(sc, batch_id, [{"x": "3"}]) == "1000"


@pytest.mark.parametrize(
    "source",
    [
        "{{ 10 ** 10000000 }}",
        "{{ 'a' * 10**9 }}",
        "{{ x }}{{ [1, 2] * 10000000 }}",
        "{{ -(7 ** (3 ** 30)) }}",
    ],
)
def test_a_constant_beyond_the_limits_is_refused_at_create_template(
    sc: Client, source: str
) -> None:
    name = unique("const")
    with pytest.raises(InvalidArgumentError) as caught:
        sc.create_template(name, system_template=source, user_template="{{ x }}", variables=["x"])
    (violation,) = caught.value.field_violations
    assert violation.field == "system_template"
    assert "beyond the limits" in violation.description
    assert list(sc.list_templates(name=name)) == []


def test_a_constant_that_burns_cpu_while_compiling_is_refused(
    sc: Client, sandboxed: CollectorEnvironment
) -> None:
    # Jinja folds this filter chain into a constant while compiling: minutes of CPU.
    name = unique("fold")
    source = "{{ 'a b '|center(1000000)|wordwrap(3)|length }}"
    with probing_health(sandboxed.address) as health, pytest.raises(InvalidArgumentError) as caught:
        sc.create_template(name, user_template=source, variables=[])
    (violation,) = caught.value.field_violations
    assert violation.field == "user_template"
    assert any(cause in violation.description for cause in LIMIT_CAUSES), violation
    assert list(sc.list_templates(name=name)) == []
    assert not health.failures
    print(f"\nhealth while a compile was refused: {health.summary()}")


def test_nested_range_loops_end_at_the_cpu_limit_while_health_answers(
    sc: Client, sandboxed: CollectorEnvironment
) -> None:
    batch_id = batch_of(sc, "{{ x }}" + NESTED_LOOPS)
    outcome: dict[str, object] = {}

    def hostile() -> None:
        try:
            sc.create_runs(batch_id, [{"x": "fine"}, {"x": "also fine"}])
        except InvalidArgumentError as exc:
            outcome["error"] = exc

    with probing_health(sandboxed.address) as health:
        thread = threading.Thread(target=hostile)
        thread.start()
        thread.join(60)
    error = outcome["error"]
    assert isinstance(error, InvalidArgumentError)
    violations = {v.field: v.description for v in error.field_violations}
    assert any(cause in violations["runs[0].variables"] for cause in LIMIT_CAUSES), violations
    assert not health.failures
    # The bound is 100 ms; the margin is for a loaded 2-core test machine.
    assert len(health.seconds) >= 3 and health.worst < 1.0, health.summary()
    print(f"\nhealth while a render was refused: {health.summary()}")
    # The sandbox replaced the process it killed: the next render works.
    ok = batch_of(sc, "hello {{ x }}")
    assert _prompt(sc, ok, [{"x": "there"}]) == "hello there"


def test_a_caller_that_gives_up_mid_render_leaves_a_working_sandbox(
    sc: Client, sandboxed: CollectorEnvironment
) -> None:
    batch_id = batch_of(sc, "{{ x }}" + NESTED_LOOPS)
    with (
        connect(sandboxed.address, token=sandboxed.token, timeout=0.3) as hasty,
        pytest.raises(DeadlineExceededError),
    ):
        hasty.create_runs(batch_id, [{"x": "1"}])
    # The stuck process was killed and replaced, not left rendering.
    ok = batch_of(sc, "hi {{ x }}")
    for _ in range(3):
        assert _prompt(sc, ok, [{"x": "there"}]) == "hi there"
    assert list(sc.list_runs(batch_id)) == []
    deadline = time.monotonic() + 60
    while sandboxed.container.sandbox.processes < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # the replacement starts in the background
    assert sandboxed.container.sandbox.processes == 2


def test_a_stored_template_that_cannot_compile_any_more_is_refused_per_call(
    sc: Client, sandboxed: CollectorEnvironment
) -> None:
    """A template stored before these checks existed (put straight into the
    database here) is compiled in the sandbox too, at its first render."""
    from nex.collector.server.domain.templates import PromptTemplate

    legacy = PromptTemplate(
        id=f"tpl_{unique('legacy').replace('-', '')}",
        name=unique("legacy"),
        version=1,
        system_template="",
        user_template="{{ x }}{{ 'a b '|center(1000000)|wordwrap(3)|length }}",
        variables=("x",),
        context_ref_id=None,
        create_time=datetime.now(UTC),
    )

    async def store() -> None:
        async with sandboxed.container.uow() as tx:
            await tx.templates.insert(legacy, "")
            await tx.commit()

    sandboxed.call(store())
    batch_id = sc.create_batch(unique("b"), legacy.id, "mock", "mock-1").id
    violations = refused_run(sc, batch_id, [{"x": "1"}])
    assert list(violations) == ["runs"]
    assert any(cause in violations["runs"] for cause in LIMIT_CAUSES), violations


@pytest.mark.parametrize(
    ("template", "x", "cause"),
    [
        ("{{ x * (10 ** 9) }}", "a", "* would repeat"),
        ("{% for i in range(x|int) %}{% endfor %}", "1000000", "range() of 1,000,000"),
        ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(x) }}", "1", "RecursionError"),
        ("{{ 1 / (x|int) }}", "0", "ZeroDivisionError"),
        ("{{ 10.0 ** (x|int) }}", "400", "OverflowError"),
        ("{{ x|round('a') }}", "1.5", "TypeError"),
        ("{{ x|truncate(x) }}", "1", "TypeError"),
        ("{{ x|center('a') }}", "1", "TypeError"),
        ("{{ x.__class__ }}", "1", "unsafe"),
        ("{{ x.no.such }}", "1", "UndefinedError"),
        ("{{ x|int|string * 1 }}{{ 'a'.ljust(900000000) }}", "1", "MemoryError"),
        ("{% for i in range(9000) %}{{ 'a' * 999 }}{% endfor %}", "1", "1,000,000 characters"),
        ("{{ x }}{{ '\\x00' }}", "1", "NUL"),
    ],
)
def test_every_render_failure_is_invalid_argument_naming_the_run(
    sc: Client, template: str, x: str, cause: str
) -> None:
    batch_id = batch_of(sc, template)
    violations = refused_run(sc, batch_id, [{"x": "2"}, {"x": x}])
    field, description = next(iter(violations.items()))
    assert field in ("runs[0].variables", "runs[1].variables")
    assert "user_template could not be rendered" in description
    assert cause in description, description


def test_create_run_names_the_field_without_an_index(sc: Client) -> None:
    batch_id = batch_of(sc, "{{ 1 / (x|int) }}")
    with pytest.raises(InvalidArgumentError) as caught:
        sc.create_run(batch_id, {"x": "0"})
    (violation,) = caught.value.field_violations
    assert violation.field == "variables"
    assert "ZeroDivisionError" in violation.description


def test_a_refused_template_leaves_nothing_in_the_compile_cache(
    sc: Client, sandboxed: CollectorEnvironment
) -> None:
    def cached() -> int:
        return sum(sandboxed.call(sandboxed.container.sandbox.cached_templates()))

    before = cached()
    for source in ("{{ 10 ** 10000000 }}", "{{ x }} {{ undeclared }}", "{{ x", "{{ x }}"):
        with pytest.raises(InvalidArgumentError):
            sc.create_template(unique("t"), user_template=source, variables=["x", "x"])
    assert cached() <= before
    # An accepted template is compiled once it renders, then kept.
    batch_id = batch_of(sc, f"cached {unique('x')} {{{{ x }}}}")
    sc.create_runs(batch_id, [{"x": "1"}])
    assert cached() >= 1


# -- property: any template built from hostile pieces is OK or INVALID_ARGUMENT -------

ATOMS = ["x", "(x|int)", "(x|float)", "(x|length)", "0", "1", "-1", "2", "10", "0.5"]
ATOMS += ["9999999999", "'a'", "'ab'", "[1, 2]", "(10 ** 3)", "i", "range(3)"]
BINOPS = ["**", "*", "/", "//", "%", "+", "-", "~"]
SIZES = ["-1", "0", "3", "100000", "10 ** 9", "x|int"]
FILTERS = ["|int", "|string", "|round(x)", "|abs", "|first", "|list", "|sum", "|join(x)"]
FILTERS += [f"|{f}({n})" for f in ("center", "indent", "truncate", "wordwrap") for n in SIZES]
FILTERS += ["|replace('a', x)", "|batch(2)|list", "|format(x)", "|float|round(2)"]
VALUES = ["0", "1", "-1", "2.5", "nan", "inf", "1e308", "99999999999999999999", "", "a"]
VALUES += ["10000", "100000000", "7" * 5000]

expressions = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(BINOPS), inner).map(lambda t: f"({' '.join(t)})"),
        st.tuples(inner, st.sampled_from(FILTERS)).map(lambda t: f"({''.join(t)})"),
    ),
    max_leaves=5,
)
outputs = expressions.map(lambda e: "{{ " + e + " }}")
LOOP_SIZES = ["3", "100", "10000", "x|int", "100001"]
blocks = st.recursive(
    outputs,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(LOOP_SIZES), inner).map(
            lambda t: f"{{% for i in range({t[0]}) %}}{t[1]}{{% endfor %}}"
        ),
        st.tuples(expressions, inner).map(lambda t: f"{{% if {t[0]} %}}{t[1]}{{% endif %}}"),
        st.tuples(inner, inner).map("".join),
    ),
    max_leaves=3,
)
recursion = st.just("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(x) }}")
sources = st.one_of(blocks, recursion)
values = st.one_of(
    st.sampled_from(VALUES),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12),
)


@given(source=sources, first=values, second=values)
def test_hostile_templates_are_ok_or_invalid_argument_and_health_stays_up(
    sc: Client, sandboxed: CollectorEnvironment, source: str, first: str, second: str
) -> None:
    name = unique("fuzz")
    try:
        template = sc.create_template(name, user_template="{{ x }}" + source, variables=["x"])
    except CollectorError as exc:
        assert isinstance(exc, InvalidArgumentError), f"{source!r}: {exc}"
        assert [v.field for v in exc.field_violations] == ["user_template"]
    else:
        batch_id = sc.create_batch(unique("b"), template.id, "mock", "mock-1").id
        try:
            runs = sc.create_runs(batch_id, [{"x": first}, {"x": second}])
        except CollectorError as exc:
            assert isinstance(exc, InvalidArgumentError), f"{source!r} {first!r} {second!r}: {exc}"
            (violation,) = exc.field_violations
            assert violation.field in ("runs[0].variables", "runs[1].variables")
            assert list(sc.list_runs(batch_id)) == []
        else:
            assert len(runs) == 2
    assert check_health(sandboxed.address, timeout=5)


def test_a_process_that_does_not_serve_starts_no_sandbox(sandboxed: CollectorEnvironment) -> None:
    from nex.collector.server.bootstrap import open_container

    async def processes(serve: bool) -> int:
        async with open_container(sandboxed.settings, serve=serve) as container:
            return container.sandbox.processes

    assert asyncio.run(processes(serve=False)) == 0  # an arq worker never renders
    assert sandboxed.container.sandbox.processes == 2
