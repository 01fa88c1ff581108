"""``nex-collector batch …``: batches of teacher runs from a JSONL file of
variables (the format: ``inputs``), their live progress, summary, cost cap
and cancellation."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nex.collector.client import (
    ExecutionMode,
    GenerationParams,
    Provider,
    RunStatus,
    TeacherBatch,
    TeacherRun,
)

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import err, out
from .inputs import InputLine, Inputs
from .options import (
    DEFAULT_MOCK_MODEL,
    LinkEvidenceOpt,
    QuietOpt,
    parse_labels,
    print_id,
    quiet_output,
)
from .render import batch_summary, runs_table, status_text, watch_progress
from .send_runs import MAX_CHUNK, chunked, send_runs

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app", "parse_deadline", "parse_mode"]

app = typer.Typer(
    help="Batches of teacher runs: create from JSONL, watch, show, cancel.",
    no_args_is_help=True,
)

# ------------------------------------------------------------------ options

_MODES = {
    "online": ExecutionMode.ONLINE,
    "provider-batch": ExecutionMode.PROVIDER_BATCH,
    "auto": ExecutionMode.AUTO,
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_mode(value: str) -> ExecutionMode:
    mode = _MODES.get(value.strip().lower().replace("_", "-"))
    if mode is None:
        raise typer.BadParameter(f"one of {', '.join(_MODES)}", param_hint="--mode")
    return mode


def parse_deadline(value: str) -> timedelta | datetime:
    """A duration ("90m", "6h", "2d") or an ISO 8601 time (UTC when it has no zone)."""
    if m := _DURATION.match(value.strip()):
        return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            "a duration such as 90m, 6h or 2d, or an ISO time such as 2026-12-02T08:00Z",
            param_hint="--deadline",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


ProviderOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        help="the teacher: openai, anthropic, mock, or a TEACHERS_FILE name "
        "(see `nex-collector teachers`)",
    ),
]


# ----------------------------------------------------------------- commands


@app.command("create")
def batch_create(
    template: Annotated[str, typer.Option("--template", help="template id")],
    inputs: Annotated[
        str, typer.Option("--inputs", help="JSONL file of variables, one run per line ('-': stdin)")
    ],
    provider: ProviderOpt = Provider.MOCK.value,
    model: Annotated[
        str | None,
        typer.Option("--model", help=f"teacher model (default for mock: {DEFAULT_MOCK_MODEL})"),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="batch name (default: file name)")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="output token limit")] = None,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling")] = None,
    top_logprobs: Annotated[
        int | None, typer.Option(help="alternatives recorded per token (0-20)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop sequence (repeat)")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="KEY=VALUE label (repeat)")
    ] = None,
    context_ref: Annotated[str | None, typer.Option("--context-ref", help="ContextRef id")] = None,
    link_evidence: LinkEvidenceOpt = False,
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="idempotency key of the batch")
    ] = None,
    chunk: Annotated[
        int, typer.Option(min=1, max=MAX_CHUNK, help="runs per BatchCreateRuns call (atomic)")
    ] = 1000,
    watch: Annotated[bool, typer.Option(help="follow the runs with a progress bar")] = True,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            "--max-cost-usd",
            min=0,
            help="hard cap on the batch's teacher spend in USD (needs --max-tokens)",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="print the worst-case cost of the file; create nothing, call no one"
        ),
    ] = False,
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="online (one call per run), provider-batch (the teacher's Batch API: about "
            "half the price, results within 24 h) or auto (provider-batch, going online for "
            "what is not done by --deadline)",
        ),
    ] = "online",
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline",
            help="when every run should have ended: a duration (90m, 6h, 2d) or an ISO time",
        ),
    ] = None,
    quiet: QuietOpt = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Create a batch with one run per line of a JSONL file, then watch it.

    Each line is a JSON object whose keys are the template's variables; strings
    are sent as they are, other values JSON-encoded. An optional top-level
    "_request_id" key is that run's idempotency key; lines without one get a key
    made of the batch id and the line's variables, so `batch add` can resend a
    file safely. Example line: {"topic": "tides", "style": "short", "_request_id": "q-17"}

    The file is checked first (JSON, variables against the template): any bad
    line is reported with its number and nothing is created. Runs are sent in
    chunks of --chunk; each chunk is all-or-nothing. Then, unless --no-watch,
    a live progress bar follows the batch until every run has ended
    (with --quiet, silently: the id is printed once every run has ended).

    With --dry-run the server renders every line and prints the worst-case
    cost (prompt bytes x input price + max_tokens x output price) instead.

    --mode provider-batch sends the runs through the teacher's Batch API
    (OpenAI Batch, Anthropic Message Batches) at its batch price; `batch show`
    lists the provider jobs and what they saved.
    """
    quiet_output(quiet)
    execution_mode = parse_mode(mode)
    when = parse_deadline(deadline) if deadline else None
    target = resolve_target(addr, token)
    runs = Inputs(inputs)
    labels = parse_labels(label or [])
    teacher_model = _model_for(provider, model)
    params = GenerationParams(
        temperature=temperature,
        max_tokens=max_tokens,
        top_p=top_p,
        top_logprobs=top_logprobs,
        seed=seed,
        stop=tuple(stop or ()),
    )

    async def action(client: AsyncClient) -> str | None:
        tmpl = await client.get_template(template)
        lines = runs.check(tmpl, note=f"template {tmpl.name} v{tmpl.version} declares: "
                           f"{', '.join(tmpl.variables) or 'no variables'}")  # fmt: skip
        if dry_run:
            await _print_estimate(client, template, provider, teacher_model, params, lines)
            return None  # nothing was created
        batch = await client.create_batch(
            name or _default_name(inputs),
            template,
            provider,
            teacher_model,
            params=params,
            context_ref_id=context_ref,
            link_evidence=link_evidence,
            labels=labels,
            request_id=request_id,
            max_cost_usd=max_cost_usd,
            execution_mode=execution_mode,
            deadline=when,
        )
        out.print(
            f"[green]✓[/green] batch [bold]{batch.id}[/bold] ({escape(batch.name)}, "
            f"{batch.provider}/{escape(batch.model)})"
        )
        await send_runs(client, batch.id, lines, chunk)
        await _finish(client, batch.id, watch)
        return batch.id

    if (created := run_with_client(target, action)) is not None:
        print_id(quiet, created)


@app.command("add")
def batch_add(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    inputs: Annotated[str, typer.Option("--inputs", help="JSONL file of variables ('-': stdin)")],
    chunk: Annotated[int, typer.Option(min=1, max=MAX_CHUNK, help="runs per call")] = 1000,
    watch: Annotated[bool, typer.Option(help="follow the runs with a progress bar")] = True,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Queue more runs in a batch from a JSONL file; resent lines are not repeated.

    Same format as `batch create`; a line queued before in this batch (same
    variables, or same _request_id) returns its first run instead of a new one."""
    target = resolve_target(addr, token)
    runs = Inputs(inputs)

    async def action(client: AsyncClient) -> None:
        batch = await client.get_batch(batch_id)
        lines = runs.check(await client.get_template(batch.template_id))
        await send_runs(client, batch.id, lines, chunk)
        await _finish(client, batch.id, watch)

    run_with_client(target, action)


@app.command("watch")
def batch_watch(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    follow: Annotated[
        bool, typer.Option("--follow", help="keep watching for new runs until Ctrl-C")
    ] = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Follow a batch live with a progress bar, then show a summary.

    The display shows runs per status, runs/s, tokens and cost. It ends when
    no run is queued or running (unless --follow) and survives collector
    restarts: the watch resumes where it stopped."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> None:
        batch = await watch_progress(client, batch_id, follow=follow)
        await show_batch_result(client, batch)

    run_with_client(target, action)


@app.command("show")
def batch_show(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    runs: Annotated[int, typer.Option("--runs", min=0, help="also list the first N runs")] = 5,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a batch: teacher, params, runs per status, tokens and cost, and its first runs."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> None:
        batch = await client.get_batch(batch_id)
        await show_batch_result(client, batch)
        first = await _first_runs(client, batch_id, runs)
        if first:
            out.print(runs_table(first, f"first {len(first)} of {batch.counts.total:,} runs"))

    run_with_client(target, action)


@app.command("list")
def batch_list(
    limit: Annotated[int, typer.Option("--limit", min=1, help="show the newest N")] = 20,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """List batches, newest last."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[TeacherBatch]:
        return [b async for b in client.list_batches(page_size=200)]

    batches = run_with_client(target, action)
    shown = batches[-limit:]
    title = (
        f"batches (newest {len(shown)} of {len(batches)})"
        if len(shown) < len(batches)
        else "batches"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=12)
    table.add_column("status", no_wrap=True)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    for b in shown:
        name = Text(b.name) + Text(f"\n{b.provider}/{b.model}", style="dim")
        done = f"{b.counts.done:,}/{b.counts.total:,}"
        cost = f"${b.usage.cost_usd:,.4f}"
        table.add_row(b.id, name, status_text(b.status), done, cost)
    out.print(table)


@app.command("cancel")
def batch_cancel(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a batch: no further teacher call is made.

    Queued runs are cancelled; running ones end cancelled when they return."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> TeacherBatch:
        return await client.cancel_batch(batch_id)

    batch = run_with_client(target, action)
    out.print(f"[yellow]cancelled[/yellow] batch [bold]{batch.id}[/bold]")
    out.print(batch_summary(batch))


@app.command("update")
def batch_update(
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="batch id")],
    max_cost_usd: Annotated[
        float | None,
        typer.Option("--max-cost-usd", min=0, help="the new cap in USD (raising it resumes)"),
    ] = None,
    no_cap: Annotated[bool, typer.Option("--no-cap", help="remove the cap")] = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a batch's cost cap; raising it resumes a batch paused for its budget."""
    if (max_cost_usd is None) == (not no_cap):
        raise typer.BadParameter("give --max-cost-usd or --no-cap", param_hint="--max-cost-usd")
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> TeacherBatch:
        return await client.update_batch(batch_id, max_cost_usd=max_cost_usd)

    out.print(batch_summary(run_with_client(target, action)))


# ------------------------------------------------------------------ helpers


async def _first_runs(
    client: AsyncClient, batch_id: str, limit: int, status: RunStatus | None = None
) -> list[TeacherRun]:
    runs: list[TeacherRun] = []
    if limit <= 0:
        return runs
    async for run in client.list_runs(batch_id, status=status, page_size=min(limit, 100)):
        runs.append(run)
        if len(runs) >= limit:
            break
    return runs


async def show_batch_result(client: AsyncClient, batch: TeacherBatch) -> None:
    """The summary table, and the first failed runs' errors if any."""
    out.print(batch_summary(batch))
    if batch.counts.failed:
        failed = await _first_runs(client, batch.id, 5, RunStatus.FAILED)
        out.print(runs_table(failed, f"first failed runs ({batch.counts.failed:,} in all)"))


async def _print_estimate(
    client: AsyncClient,
    template_id: str,
    provider: str,
    model: str,
    params: GenerationParams,
    lines: Sequence[InputLine],
) -> None:
    """What --dry-run prints: the worst case of every line, nothing created."""
    runs = prompt = output = 0
    cost = 0.0
    priced = True
    for part in chunked(lines, MAX_CHUNK):
        e = await client.estimate_batch(
            template_id, provider, model, [line.variables for line in part], params=params
        )
        runs += e.runs
        prompt += e.prompt_tokens_bound
        output += e.output_tokens_bound
        cost += e.worst_case_cost_usd
        priced = priced and e.priced
    out.print(f"dry run: {runs:,} runs of {provider}/{escape(model)}; nothing was created")
    out.print(f"  prompt tokens   ≤ {prompt:,}")
    assumed = "" if params.max_tokens else " (no --max-tokens: the provider default, assumed)"
    out.print(f"  output tokens   ≤ {output:,}{assumed}")
    if priced:
        out.print(f"  worst-case cost ≤ [bold]${cost:,.6f}[/bold]")
    else:
        out.print(f"  worst-case cost: unknown ({escape(model)} has no known price)")


async def _finish(client: AsyncClient, batch_id: str, watch: bool) -> None:
    if watch:
        try:
            batch = await watch_progress(client, batch_id)
        except asyncio.CancelledError:  # Ctrl-C
            err.print(
                f"[dim]stopped watching; the batch keeps running. Resume with: "
                f"nex-collector batch watch {batch_id}[/dim]"
            )
            raise
        await show_batch_result(client, batch)
    else:
        out.print(f"watch it with: nex-collector batch watch {batch_id}")


def _model_for(provider: str, model: str | None) -> str:
    if model:
        return model
    if provider == Provider.MOCK:
        return DEFAULT_MOCK_MODEL
    raise typer.BadParameter(f"give the {provider} model to call", param_hint="--model")


def _default_name(path: str) -> str:
    return "stdin" if path == "-" else Path(path).stem
