"""Prompt templates: Jinja2 syntax, rendered in a sandbox with strict undefined variables.

Pure functions: parsing, checking, compiling and rendering. A template comes from
the caller, so everything here runs in a sandbox process with CPU and memory
limits (see `nex.collector.server.sandbox`); the limits below keep the common
abuses (huge powers, repeated strings, long ranges, huge output) to a clean,
named error instead of a killed process.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nex.collector.server.domain.errors import FieldViolation, Violations, quote
from nex.collector.server.domain.limits import MAX_TEMPLATE_CHARS, MAX_VARIABLES
from nex.collector.server.domain.teacher import ChatMessage

MAX_RANGE = 10_000  # items of one range()
MAX_INT_BITS = 16_384  # an int result of * or ** (about 4,900 decimal digits)
MAX_REPEAT_ITEMS = 1_000_000  # a string or list repeated with *
MAX_RENDERED_CHARS = 1_000_000  # one rendered message
MAX_ERROR_CHARS = 300  # of an exception's text quoted in a violation
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# The two sources of a template, in the order a prompt's messages take them.
SOURCE_FIELDS = ("system_template", "user_template")


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    id: str
    name: str
    version: int
    system_template: str
    user_template: str
    variables: tuple[str, ...]
    context_ref_id: str | None
    create_time: datetime


class LimitExceeded(SecurityError):
    """An operation inside a template would pass one of the limits above."""


class RenderFailed(Exception):
    """Rendering one run failed; `index` is its position in the call, `field`
    the template source that failed, `description` the cause for the caller."""

    def __init__(self, index: int, field: str, description: str) -> None:
        super().__init__(f"runs[{index}] {field}: {description}")
        self.index, self.field, self.description = index, field, description


class TemplateEngine(Protocol):
    """Checks and renders templates away from the caller's event loop (the
    sandbox process pool implements it)."""

    async def check(
        self, sources: Sequence[tuple[str, str]], declared: Sequence[str]
    ) -> list[FieldViolation]:
        """The violations of each (field, source) pair, compiled as a template."""
        ...

    async def render(
        self, template: PromptTemplate, runs: Sequence[Mapping[str, str]]
    ) -> list[list[ChatMessage]]:
        """The prompt of each run, in order; raises RenderFailed naming the first
        run that could not be rendered."""
        ...


# -- bounded arithmetic ------------------------------------------------------------

_Sequence = (str, bytes, bytearray, list, tuple)


def checked_power(base: Any, exponent: Any) -> Any:
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise LimitExceeded(
            f"** would give an integer of more than {MAX_INT_BITS} bits "
            f"(exponent {_short(exponent)})"
        )
    return operator.pow(base, exponent)


def checked_multiply(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise LimitExceeded(f"* would give an integer of more than {MAX_INT_BITS} bits")
    elif isinstance(left, _Sequence) and isinstance(right, int):
        _check_repeat(left, right)
    elif isinstance(right, _Sequence) and isinstance(left, int):
        _check_repeat(right, left)
    return operator.mul(left, right)


def _check_repeat(seq: Sequence[Any] | bytes | bytearray, times: int) -> None:
    if times > 0 and len(seq) * times > MAX_REPEAT_ITEMS:
        raise LimitExceeded(
            f"* would repeat {len(seq)} items {_short(times)} times "
            f"(at most {MAX_REPEAT_ITEMS:,} in all)"
        )


def bounded_range(*args: int) -> range:
    """range() of at most MAX_RANGE items."""
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise LimitExceeded(f"range() of {len(rng):,} items (at most {MAX_RANGE:,})")
    return rng


def _short(value: int) -> str:
    return str(value) if value.bit_length() < 64 else f"of {value.bit_length()} bits"


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with bounded `*`, `**` and `range`, no `lipsum`,
    and strict undefined variables. Intercepted operators are never folded into
    constants at compile time, so `{{ 10 ** 10000000 }}` costs nothing to compile."""

    intercepted_binops = frozenset({"*", "**"})
    _checked: dict[str, Callable[[Any, Any], Any]] = {"*": checked_multiply, "**": checked_power}

    def __init__(self) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
        )
        self.globals["range"] = bounded_range
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) is an unbounded loop

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        check = self._checked.get(operator)
        if check is not None:
            return check(left, right)
        return super().call_binop(context, operator, left, right)


@functools.cache
def _environment() -> BoundedSandbox:
    return BoundedSandbox()


# -- checking and compiling --------------------------------------------------------


def describe(exc: BaseException) -> str:
    """An exception as a caller reads it: its type and a bounded message."""
    text = " ".join(str(exc).split())
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_template_length(v: Violations, field: str, source: str) -> bool:
    """Whether `source` is short enough to be checked at all."""
    if len(source) > MAX_TEMPLATE_CHARS:
        v.add(field, f"must be at most {MAX_TEMPLATE_CHARS} characters")
        return False
    return True


def template_problems(source: str, declared: Sequence[str]) -> list[str]:
    """Why `source` is not an acceptable template (empty when it is): it does not
    parse, uses an undeclared variable, computes a constant beyond the limits,
    or does not compile."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return [f"must be at most {MAX_TEMPLATE_CHARS} characters"]
    env = _environment()
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return [f"template syntax error at line {exc.lineno}: {describe_message(exc.message)}"]
    except Exception as exc:  # RecursionError on deep nesting, MemoryError, …
        return [f"template could not be parsed: {describe(exc)}"]
    try:
        undeclared = sorted(meta.find_undeclared_variables(ast) - set(declared))
        constant = _constant_problem(ast)
    except Exception as exc:  # RecursionError on a deep tree
        return [f"template could not be parsed: {describe(exc)}"]
    if undeclared:
        return [f"uses undeclared variables {', '.join(undeclared)}; declare them in variables"]
    if constant:
        return [constant]
    try:
        compile_template(source)
    except Exception as exc:
        return [f"template could not be compiled: {describe(exc)}"]
    return []


def describe_message(message: str | None) -> str:
    text = " ".join((message or "").split())
    return text[:MAX_ERROR_CHARS] + "…" if len(text) > MAX_ERROR_CHARS else text


def _constant_problem(ast: nodes.Template) -> str | None:
    """A constant `*` or `**` that passes the limits (`{{ 10 ** 10000000 }}`),
    found at once instead of at every render."""
    for node in ast.find_all((nodes.Mul, nodes.Pow)):
        try:
            _fold(node)
        except LimitExceeded as exc:
            return f"template computes a constant beyond the limits: {exc}"
        except Exception:  # not constant, or fails only when rendered
            continue
    return None


def _fold(node: nodes.Node) -> Any:
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg | nodes.Pos):
        return -_fold(node.node) if isinstance(node, nodes.Neg) else _fold(node.node)
    if isinstance(node, nodes.Mul):
        return checked_multiply(_fold(node.left), _fold(node.right))
    if isinstance(node, nodes.Pow):
        return checked_power(_fold(node.left), _fold(node.right))
    raise nodes.Impossible()


def compile_template(source: str) -> jinja2.Template:
    """The compiled template (constant folding runs here, under the sandbox's limits)."""
    return _environment().from_string(source)


def check_variable_names(v: Violations, field: str, names: Sequence[str]) -> None:
    if len(names) > MAX_VARIABLES:
        v.add(field, f"at most {MAX_VARIABLES} variables are allowed")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not _IDENTIFIER.fullmatch(name):
            v.add(f"{field}[{i}]", f"{quote(name)} is not an identifier (letters, digits, _)")
        elif name in seen:
            v.add(f"{field}[{i}]", f"{quote(name)} is declared twice")
        seen.add(name)


def check_variables(
    template: PromptTemplate, variables: Mapping[str, str], field: str = "variables"
) -> list[FieldViolation]:
    """The violations of `variables` against the template's declared set."""
    out: list[FieldViolation] = []
    missing = [n for n in template.variables if n not in variables]
    extra = sorted(set(variables) - set(template.variables))
    if missing:
        out.append(
            FieldViolation(
                field,
                f"missing variables {', '.join(missing)} "
                f"(template {template.name} v{template.version})",
            )
        )
    if extra:
        out.append(
            FieldViolation(
                field,
                f"variables {', '.join(extra)} are not declared by "
                f"template {template.name} v{template.version}",
            )
        )
    return out


# -- rendering ---------------------------------------------------------------------


def render_text(template: jinja2.Template, variables: Mapping[str, str]) -> str:
    """One rendered message: at most MAX_RENDERED_CHARS, storable text (no NUL, no
    lone surrogate). Raises whatever the template raises."""
    parts: list[str] = []
    size = 0
    for chunk in template.generate(variables):
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise LimitExceeded(f"the output passes {MAX_RENDERED_CHARS:,} characters")
        parts.append(chunk)
    text = "".join(parts)
    if "\x00" in text:
        raise LimitExceeded("the output contains a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LimitExceeded("the output is not valid UTF-8 (a lone surrogate)") from None
    return text


def render(template: PromptTemplate, variables: Mapping[str, str]) -> list[ChatMessage]:
    """The rendered prompt (an optional system message and the user message), in
    this process: for tests and tools; the server renders in its sandbox."""
    compiled = [compile_template(s) if s else None for s in _sources(template)]
    return render_prompt(compiled, variables, 0)


def _sources(template: PromptTemplate) -> tuple[str, str]:
    return template.system_template, template.user_template


def render_prompt(
    compiled: Sequence[jinja2.Template | None],
    variables: Mapping[str, str],
    index: int,
    on_source: Callable[[int], None] | None = None,
) -> list[ChatMessage]:
    """The messages of one run from the compiled (system, user) sources; a failure
    is RenderFailed naming run `index`. `on_source(k)` is told which source is
    being rendered (the sandbox records it, to name the run if it is killed)."""
    messages: list[ChatMessage] = []
    for k, (role, template) in enumerate(zip(("system", "user"), compiled, strict=True)):
        if template is None:
            continue
        if on_source is not None:
            on_source(k)
        try:
            messages.append(ChatMessage(role, render_text(template, variables)))
        except Exception as exc:  # overflow, ZeroDivisionError, undefined, SecurityError, …
            raise RenderFailed(index, SOURCE_FIELDS[k], describe(exc)) from None
    return messages
