"""``nex-collector run …``: single teacher runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from nex.collector.client import RunView, TeacherRun

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import out
from .render import run_panel

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app"]

app = typer.Typer(help="Single teacher runs.", no_args_is_help=True)


@app.command("show")
def run_show(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="run id")],
    tokens: Annotated[
        int, typer.Option("--tokens", min=0, help="how many output tokens to list")
    ] = 12,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a run: prompt, output, usage, scores, first tokens with logprobs.

    Also the finish reason, latency, attempt, error, and per token its
    logprob, probability and top alternatives."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> TeacherRun:
        return await client.get_run(run_id, view=RunView.FULL)

    out.print(run_panel(run_with_client(target, action), tokens))
