"""Prompt templates: Jinja2 syntax, rendered in a sandbox with strict undefined variables."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nex.collector.server.domain.errors import FieldViolation, InvalidArgument, Violations, quote
from nex.collector.server.domain.limits import MAX_TEMPLATE_CHARS, MAX_VARIABLES
from nex.collector.server.domain.teacher import ChatMessage

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


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


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


def check_template_source(v: Violations, field: str, source: str, declared: Sequence[str]) -> None:
    """Adds a violation when `source` does not parse or uses an undeclared variable."""
    if len(source) > MAX_TEMPLATE_CHARS:
        v.add(field, f"must be at most {MAX_TEMPLATE_CHARS} characters")
        return
    try:
        ast = _environment().parse(source)
    except jinja2.TemplateSyntaxError as exc:
        v.add(field, f"template syntax error at line {exc.lineno}: {exc.message}")
        return
    undeclared = sorted(meta.find_undeclared_variables(ast) - set(declared))
    if undeclared:
        v.add(
            field, f"uses undeclared variables {', '.join(undeclared)}; declare them in variables"
        )


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


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def render(
    template: PromptTemplate, variables: Mapping[str, str], field: str = "variables"
) -> list[ChatMessage]:
    """The rendered prompt: an optional system message and the user message."""
    problems = check_variables(template, variables, field)
    if problems:
        raise InvalidArgument(problems)
    messages: list[ChatMessage] = []
    try:
        if template.system_template:
            messages.append(
                ChatMessage("system", _compiled(template.system_template).render(variables))
            )
        messages.append(ChatMessage("user", _compiled(template.user_template).render(variables)))
    except jinja2.TemplateError as exc:  # sandbox SecurityError, undefined attribute, …
        raise InvalidArgument.one(field, f"template could not be rendered: {exc}") from None
    return messages
