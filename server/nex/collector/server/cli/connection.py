"""Where the collector is and which token to send (``--addr``, ``--token``,
else the environment), TLS, and one asyncio client per command."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.markup import escape

from .consoles import err
from .errors import fail, show_errors

# The client (grpc) and the settings (pydantic-settings) load when a command
# runs, so that --help starts fast.
if TYPE_CHECKING:
    import grpc

    from nex.collector.client import AsyncClient
    from nex.collector.server.config import ClientSettings, Settings

__all__ = [
    "CALL_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "AddrOpt",
    "Target",
    "TokenOpt",
    "client_tls",
    "first_token",
    "load_client_settings",
    "open_client",
    "resolve_target",
    "run_with_client",
]

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
"""How long a command waits for the collector to answer before giving up."""
CALL_TIMEOUT_S = 120.0
"""The deadline of each unary call once connected."""

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
