"""``nex-collector template …``: prompt templates (Jinja2, versioned by name)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from nex.collector.client import PromptTemplate

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import out
from .options import QuietOpt, print_id, quiet_output
from .render import shorten

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app"]

app = typer.Typer(help="Prompt templates (Jinja2, versioned by name).", no_args_is_help=True)


@app.command("create")
def template_create(
    name: Annotated[str, typer.Option("--name", help="template name; reusing it adds a version")],
    user: Annotated[
        str, typer.Option("--user", help="user message, Jinja2: 'Explain {{ topic }}'")
    ],
    var: Annotated[
        list[str] | None, typer.Option("--var", help="a declared variable (repeat for each)")
    ] = None,
    system: Annotated[str, typer.Option("--system", help="system message, Jinja2")] = "",
    context_ref: Annotated[
        str | None, typer.Option("--context-ref", help="ContextRef id it belongs to")
    ] = None,
    quiet: QuietOpt = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a prompt template (the next version of NAME); prints its id.

    Every placeholder must be declared with --var, e.g.
    --user 'Explain {{ topic }} in a {{ style }} way' --var topic --var style.
    """
    quiet_output(quiet)
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> PromptTemplate:
        return await client.create_template(
            name,
            user_template=user,
            system_template=system,
            variables=var or [],
            context_ref_id=context_ref,
        )

    t = run_with_client(target, action)
    out.print(
        f"[green]✓[/green] template [bold]{escape(t.name)}[/bold] v{t.version}: "
        f"[bold]{t.id}[/bold] (variables: {', '.join(t.variables) or 'none'})"
    )
    print_id(quiet, t.id)


@app.command("list")
def template_list(
    name: Annotated[str | None, typer.Option("--name", help="only this name")] = None,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """List templates (all versions), oldest first."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[PromptTemplate]:
        return [t async for t in client.list_templates(name)]

    table = Table(title="templates", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    for column in ("name", "v", "variables", "user template"):
        table.add_column(column)
    for t in run_with_client(target, action):
        table.add_row(
            t.id, escape(t.name), str(t.version), ", ".join(t.variables),
            escape(shorten(t.user_template, 60)),
        )  # fmt: skip
    out.print(table)
