"""``nex-collector evidence …``: evidence links from a dataset or a run to a
NEX context, delivered to NEX by the workers (integrated mode).

``evidence link --wait`` follows the link until NEX has accepted it, showing
the delivery attempts and the last error while NEX is down; the link itself
is safe in PostgreSQL from the moment the command prints its id, so stopping
the wait (Ctrl-C, ``--timeout``) never stops the delivery.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nex.collector.client import EvidenceLink, EvidenceStatus

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import err, out
from .errors import fail
from .options import QuietOpt, print_id, quiet_output
from .render import fmt_time, shorten

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app", "evidence_table"]

POLL_S = 0.5
"""How often ``evidence link --wait`` asks for the link's status."""

app = typer.Typer(
    help="Evidence links to NEX contexts, delivered to NEX (integrated mode).",
    no_args_is_help=True,
)


@app.command("link")
def evidence_link(
    context_ref: Annotated[str, typer.Option("--context-ref", help="ContextRef id")],
    dataset: Annotated[str | None, typer.Option("--dataset", help="dataset id")] = None,
    run: Annotated[str | None, typer.Option("--run", help="run id")] = None,
    kind: Annotated[str, typer.Option("--kind", help="what the link says")] = "evidence",
    note: Annotated[str, typer.Option("--note", help="free text sent to NEX")] = "",
    quiet: QuietOpt = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait until NEX has accepted the link")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0, help="with --wait: give up waiting after SECONDS"),
    ] = None,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Link a dataset or a run (give one) to a NEX context; a worker delivers it.

    The link is stored as pending at once and posted to NEX by a worker,
    retried with backoff while NEX is down, until NEX accepts it."""
    if (dataset is None) == (run is None):
        raise typer.BadParameter("give exactly one of --dataset and --run")
    quiet_output(quiet)
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> EvidenceLink:
        link = await client.create_evidence_link(
            context_ref, dataset_id=dataset, run_id=run, kind=kind, note=note
        )
        out.print(f"[green]✓[/green] evidence link [bold]{link.id}[/bold] stored, pending")
        if not wait:
            return link
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            return await _wait_posted(client, link, deadline)
        except asyncio.CancelledError:  # Ctrl-C
            _still_pending_hint(link.id)
            raise

    link = run_with_client(target, action)
    out.print(evidence_table(link))
    print_id(quiet, link.id)
    if wait and link.status != EvidenceStatus.POSTED:
        _still_pending_hint(link.id)
        fail(f"not posted within {timeout:g} s" if timeout is not None else "not posted")
    if not wait:
        out.print(f"follow it with: nex-collector evidence show {link.id}")


@app.command("show")
def evidence_show(
    link_id: Annotated[str, typer.Argument(metavar="ID", help="evidence link id")],
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show an evidence link: what it links, its delivery status, attempts, last error."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> EvidenceLink:
        return await client.get_evidence_link(link_id)

    out.print(evidence_table(run_with_client(target, action)))


@app.command("list")
def evidence_list(
    context_ref: Annotated[
        str | None, typer.Option("--context-ref", help="only links to this ContextRef")
    ] = None,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """List evidence links, oldest first."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[EvidenceLink]:
        return [x async for x in client.list_evidence_links(context_ref)]

    table = Table(title="evidence links", box=box.SIMPLE_HEAD)
    table.add_column("link", no_wrap=True)
    table.add_column("kind", overflow="fold")
    table.add_column("delivery", overflow="fold", min_width=12)
    for x in run_with_client(target, action):
        delivery = _status_text(x) + Text(f"\n{_attempts(x.attempts)}", style="dim")
        if x.last_error and x.status != EvidenceStatus.POSTED:
            delivery += Text(f"\n{shorten(x.last_error, 60)}", style="red")
        what = Text(x.id) + Text(f"\n{_linked(x)}\n→ {x.context_ref_id}", style="dim")
        table.add_row(what, escape(x.kind), delivery)
    out.print(table)


def evidence_table(link: EvidenceLink) -> Table:
    """One link, field by field."""
    table = Table(box=box.SIMPLE, show_header=False, title=f"evidence link {link.id}")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("context ref", link.context_ref_id)
    table.add_row("links", _linked(link))
    table.add_row("kind", escape(link.kind))
    if link.note:
        table.add_row("note", escape(link.note))
    table.add_row("status", _status_text(link))
    table.add_row("attempts", str(link.attempts))
    if link.last_error:
        table.add_row("last error", Text(link.last_error, style="red"))
    table.add_row("created", fmt_time(link.create_time))
    table.add_row("posted", fmt_time(link.post_time))
    return table


async def _wait_posted(
    client: AsyncClient, link: EvidenceLink, deadline: float | None
) -> EvidenceLink:
    """Polls the link until it is posted or the ``time.monotonic()`` deadline
    passes; returns it as last seen."""
    with out.status("waiting for NEX to accept the link…") as status:
        while link.status != EvidenceStatus.POSTED:
            if deadline is not None and time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_S)
            link = await client.get_evidence_link(link.id)
            if link.attempts:
                why = f", last error: {shorten(link.last_error, 60)}" if link.last_error else ""
                status.update(
                    escape(f"waiting for NEX to accept the link: {_attempts(link.attempts)}{why}")
                )
    return link


def _still_pending_hint(link_id: str) -> None:
    err.print(
        f"[dim]the link stays stored and the workers keep delivering it; "
        f"follow it with: nex-collector evidence show {link_id}[/dim]"
    )


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _linked(link: EvidenceLink) -> str:
    if link.dataset_id:
        return f"dataset {link.dataset_id}"
    return f"run {link.run_id}" if link.run_id else "-"


def _status_text(link: EvidenceLink) -> Text:
    if link.status == EvidenceStatus.POSTED:
        return Text("posted", style="green")
    return Text(link.status.name.lower(), style="yellow")
