"""What every client command shares: where the collector is and which token to
send, one asyncio client per command, the rich consoles, and how a failed
call is shown (``error: <message>`` plus the bad fields, exit code 1, never a
traceback)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

# Only plain data types at import time: the client (grpc) and the settings
# (pydantic-settings) load when a command runs, so that --help starts fast.
from nex.collector.client import BatchStatus, DatasetStatus, RunStatus, Usage

if TYPE_CHECKING:
    import grpc

    from nex.collector.client import AsyncClient, CollectorError
    from nex.collector.server.config import ClientSettings, Settings

__all__ = [
    "ID_WIDTH",
    "AddrOpt",
    "LinkEvidenceOpt",
    "QuietOpt",
    "Target",
    "TokenOpt",
    "client_tls",
    "err",
    "fail",
    "first_token",
    "fmt_bytes",
    "fmt_time",
    "fmt_usage",
    "headline",
    "load_client_settings",
    "open_client",
    "out",
    "parse_labels",
    "print_collector_error",
    "print_id",
    "quiet_output",
    "resolve_target",
    "run_style",
    "run_with_client",
    "shorten",
    "show_errors",
    "status_text",
]

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
"""How long a command waits for the collector to answer before giving up."""
CALL_TIMEOUT_S = 120.0
"""The deadline of each unary call once connected."""
ID_WIDTH = 30
"""Characters of a server id (``bat_`` + 26)."""

out = Console(highlight=False)
"""Human output (stdout)."""
err = Console(stderr=True, highlight=False)
"""Errors and notes (stderr)."""

AddrOpt = Annotated[
    str | None,
    typer.Option(
        "--addr",
        help="host:port of the collector (default: NEX_COLLECTOR_ADDR, else 127.0.0.1:50051)",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="NEX_COLLECTOR_TOKEN",
        show_envvar=False,
        help="bearer token (default: NEX_COLLECTOR_TOKEN, else the first of NEX_COLLECTOR_TOKENS)",
        show_default=False,
    ),
]
LinkEvidenceOpt = Annotated[
    bool,
    typer.Option(
        "--link-evidence",
        help="with --context-ref: link it to the NEX context once finished (integrated mode)",
    ),
]

QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="print only the new id, for scripts: ID=$(nex-collector … -q)",
    ),
]


def quiet_output(quiet: bool) -> None:
    """With --quiet, human output (tables, progress) is off; errors still go to stderr."""
    out.quiet = quiet


def print_id(quiet: bool, new_id: str) -> None:
    """The new id alone on stdout, with --quiet."""
    if quiet:
        print(new_id, flush=True)


@dataclass(frozen=True, slots=True)
class Target:
    """A collector to talk to."""

    addr: str
    token: str | None
    tls: bool | grpc.ChannelCredentials = False


def client_tls(settings: Settings | ClientSettings) -> bool | grpc.ChannelCredentials:
    """TLS for client commands: NEX_COLLECTOR_TLS_CA names the CA bundle (PEM) to
    trust, or `system` for the system roots; unset: plaintext."""
    if not settings.tls_ca:
        return False
    import grpc

    if settings.tls_ca == "system":
        return True
    try:
        roots = Path(settings.tls_ca).read_bytes()
    except OSError as exc:
        fail(f"cannot read NEX_COLLECTOR_TLS_CA: {exc}", code=2)
    return grpc.ssl_channel_credentials(root_certificates=roots)


def load_client_settings() -> ClientSettings:
    """What client commands read from the environment (address, token, TLS CA,
    data dir); never the server's own settings."""
    from nex.collector.server.config import ConfigError
    from nex.collector.server.config import load_client_settings as read_client_settings

    try:
        return read_client_settings()
    except ConfigError as exc:
        err.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def first_token(settings: Settings | ClientSettings) -> str | None:
    """The first of NEX_COLLECTOR_TOKENS, in the order written."""
    for token in settings.tokens_csv.split(","):
        if token.strip():
            return token.strip()
    return None


def resolve_target(addr: str | None, token: str | None) -> Target:
    """``--addr`` / ``--token``, else the defaults from the environment."""
    settings = load_client_settings()
    return Target(addr or settings.addr, token or settings.default_token, client_tls(settings))


def fail(message: str, details: Iterable[str] = (), *, code: int = 1) -> NoReturn:
    """Prints ``error: message`` and the details, then exits with ``code``."""
    err.print(f"[bold red]error:[/bold red] {escape(message)}")
    for line in details:
        err.print(f"  {escape(line)}")
    raise typer.Exit(code)


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``--label KEY=VALUE`` options as a mapping."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--label")
        labels[key.strip()] = value.strip()
    return labels


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


async def open_client(target: Target) -> AsyncClient:
    """Connects (waiting at most ``CONNECT_TIMEOUT_S``), then allows longer calls."""
    from nex.collector.client import AsyncClient

    client = await AsyncClient.connect(
        target.addr, target.token, timeout=CONNECT_TIMEOUT_S, tls=target.tls
    )
    client.timeout = CALL_TIMEOUT_S
    return client


def run_with_client(target: Target, action: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Runs ``action`` with a client connected to ``target`` on a fresh event
    loop; errors are shown as ``show_errors`` does."""

    async def main() -> T:
        client = await open_client(target)
        try:
            return await action(client)
        finally:
            await client.close()

    with show_errors(target):
        return asyncio.run(main())


# ------------------------------------------------------------------ formatting

_RUN_STYLE = {
    RunStatus.QUEUED: "grey62",
    RunStatus.RUNNING: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
}
_BATCH_STYLE = {
    BatchStatus.OPEN: "grey62",
    BatchStatus.RUNNING: "cyan",
    BatchStatus.COMPLETED: "green",
    BatchStatus.CANCELLED: "yellow",
}
_DATASET_STYLE = {
    DatasetStatus.BUILDING: "cyan",
    DatasetStatus.READY: "green",
    DatasetStatus.FAILED: "red",
}


def status_text(status: RunStatus | BatchStatus | DatasetStatus) -> Text:
    """The status in lower case, coloured."""
    # IntEnums of different classes compare equal by value: pick the table by class.
    if isinstance(status, RunStatus):
        return Text(status.name.lower(), style=_RUN_STYLE.get(status, ""))
    if isinstance(status, BatchStatus):
        return Text(status.name.lower(), style=_BATCH_STYLE.get(status, ""))
    return Text(status.name.lower(), style=_DATASET_STYLE.get(status, ""))


def run_style(status: RunStatus) -> str:
    return _RUN_STYLE.get(status, "")


def fmt_time(value: datetime | None, *, short: bool = False) -> str:
    """Local time to the second (``short``: month, day, minutes), or ``-``."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def fmt_usage(usage: Usage) -> str:
    return f"{usage.input_tokens:,} in · {usage.output_tokens:,} out · ${usage.cost_usd:,.4f}"


def fmt_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - unreachable


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"
