"""``nex-collector context …``: references to NEX contexts (id + version,
never their content)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from nex.collector.client import ContextRef

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import out
from .options import QuietOpt, parse_labels, print_id, quiet_output
from .render import fmt_time

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app"]

app = typer.Typer(
    help="References to NEX contexts (id + version; never their content).",
    no_args_is_help=True,
)


@app.command("create")
def context_create(
    nex_context_id: Annotated[str, typer.Argument(metavar="NEX_CONTEXT_ID")],
    version: Annotated[str, typer.Argument(metavar="VERSION", help="the context's version")],
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE (repeat for each)")
    ] = None,
    quiet: QuietOpt = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register a NEX context version; prints the ContextRef id.

    The same id and version again give the existing reference. In integrated
    mode the collector first asks NEX whether that version exists."""
    quiet_output(quiet)
    target = resolve_target(addr, token)
    labels = parse_labels(label or [])

    async def action(client: AsyncClient) -> ContextRef:
        return await client.create_context_ref(nex_context_id, version, labels=labels)

    ref = run_with_client(target, action)
    out.print(
        f"[green]✓[/green] context ref [bold]{ref.id}[/bold] → "
        f"{escape(ref.nex_context_id)}@{escape(ref.nex_context_version)}"
    )
    print_id(quiet, ref.id)


@app.command("show")
def context_show(
    ref_id: Annotated[str, typer.Argument(metavar="ID", help="ContextRef id")],
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a ContextRef."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> ContextRef:
        return await client.get_context_ref(ref_id)

    ref = run_with_client(target, action)
    table = Table(box=box.SIMPLE, show_header=False, title=f"context ref {ref.id}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("NEX context", escape(ref.nex_context_id))
    table.add_row("version", escape(ref.nex_context_version))
    table.add_row("labels", escape(_labels_text(ref)) or "-")
    table.add_row("created", fmt_time(ref.create_time))
    out.print(table)


@app.command("list")
def context_list(
    nex_context_id: Annotated[
        str | None, typer.Option("--nex-context-id", help="only versions of this context")
    ] = None,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """List ContextRefs, oldest first."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[ContextRef]:
        return [r async for r in client.list_context_refs(nex_context_id=nex_context_id)]

    table = Table(title="context refs", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("NEX context", overflow="fold")
    table.add_column("version", overflow="fold")
    table.add_column("labels", overflow="fold")
    table.add_column("created", no_wrap=True)
    for ref in run_with_client(target, action):
        table.add_row(
            ref.id, escape(ref.nex_context_id), escape(ref.nex_context_version),
            escape(_labels_text(ref)), fmt_time(ref.create_time, short=True),
        )  # fmt: skip
    out.print(table)


def _labels_text(ref: ContextRef) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(ref.labels.items()))
