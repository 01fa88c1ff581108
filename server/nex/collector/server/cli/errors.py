"""How a failure is shown: ``error: <message>`` plus the bad fields and a
hint, exit code 1 (2 for a bad setting, 130 for Ctrl-C), never a traceback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape

from .consoles import err

if TYPE_CHECKING:
    from nex.collector.client import CollectorError

    from .connection import Target

__all__ = ["fail", "headline", "print_collector_error", "show_errors"]


def fail(message: str, details: Iterable[str] = (), *, code: int = 1) -> NoReturn:
    """Prints ``error: message`` and the details, then exits with ``code``."""
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    for line in details:
        err.print(f"  {escape(line)}")
    raise typer.Exit(code)


def headline(exc: CollectorError) -> str:
    """The error's message without the field violations it repeats (they are
    listed one per line below it)."""
    message = exc.message or exc.code.name
    if not exc.field_violations:
        return message
    first = exc.field_violations[0]
    at = message.find(f"{first.field}: {first.description}")
    if at > 0 and all(f"{v.field}: {v.description}" in message for v in exc.field_violations):
        return message[:at].rstrip(" :;,") or message
    return message


def print_collector_error(exc: CollectorError, target: Target | None = None) -> None:
    """``error: <message> [REASON]`` and one line per bad field, plus a hint."""
    from nex.collector.client import UnauthenticatedError, UnavailableError

    reason = f" [dim]\\[{escape(exc.reason)}][/dim]" if exc.reason else ""
    err.print(f"[bold red]error:[/bold red] {escape(headline(exc))}{reason}")
    for v in exc.field_violations:
        err.print(f"  [yellow]{escape(v.field)}[/yellow]: {escape(v.description)}")
    if isinstance(exc, UnavailableError) and target is not None:
        err.print(
            f"  [dim]is a collector running at {escape(target.addr)}? "
            "Start one with `nex-collector dev`, or pass --addr.[/dim]"
        )
    elif isinstance(exc, UnauthenticatedError):
        err.print("  [dim]pass --token, or set NEX_COLLECTOR_TOKEN.[/dim]")


@contextlib.contextmanager
def show_errors(target: Target | None = None) -> Iterator[None]:
    """Turns a ``CollectorError`` into ``error: …`` + exit 1, and Ctrl-C into exit 130."""
    from nex.collector.client import CollectorError

    try:
        yield
    except CollectorError as exc:
        print_collector_error(exc, target)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
