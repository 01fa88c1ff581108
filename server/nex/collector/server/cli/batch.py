"""``nex-collector template …``, ``batch …`` and ``run …``: prompt templates,
batches of teacher runs from a JSONL file of variables, live progress, runs.

The JSONL input: one JSON object per line, its keys the template's variables.
String values are sent as they are; any other value is sent JSON-encoded
(``3`` → ``"3"``, ``["a"]`` → ``'["a"]'``). An optional top-level
``"_request_id"`` key is the run's idempotency key (unique across the
collector: sending it again returns the run first created with it). Lines
without one get a key derived from the batch and the line's variables, so
sending the same file to the same batch again (``batch add``) creates only
the runs that are missing. Blank lines are skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, NoReturn

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from nex.collector.client import (
    ExecutionMode,
    GenerationParams,
    PromptTemplate,
    Provider,
    RunInput,
    RunStatus,
    RunView,
    TeacherBatch,
    TeacherRun,
)
from nex.collector.server.domain.limits import MAX_REQUEST_ID

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient, InvalidArgumentError

from .common import (
    ID_WIDTH,
    AddrOpt,
    LinkEvidenceOpt,
    QuietOpt,
    TokenOpt,
    err,
    fail,
    fmt_time,
    fmt_usage,
    out,
    parse_labels,
    print_collector_error,
    print_id,
    quiet_output,
    resolve_target,
    run_style,
    run_with_client,
    shorten,
    status_text,
)

__all__ = [
    "REQUEST_ID_KEY",
    "InputLine",
    "batch_app",
    "batch_summary",
    "read_inputs",
    "run_app",
    "run_panel",
    "template_app",
    "watch_progress",
]

REQUEST_ID_KEY = "_request_id"
MAX_CHUNK = 5000
MAX_PROBLEMS_SHOWN = 20
DEFAULT_MOCK_MODEL = "mock-teacher"

template_app = typer.Typer(
    help="Prompt templates (Jinja2, versioned by name).", no_args_is_help=True
)
batch_app = typer.Typer(
    help="Batches of teacher runs: create from JSONL, watch, show, cancel.",
    no_args_is_help=True,
)
run_app = typer.Typer(help="Single teacher runs.", no_args_is_help=True)


# ---------------------------------------------------------------- JSONL input


@dataclass(frozen=True, slots=True)
class InputLine:
    """One run to create, from line ``line`` (1-based) of the input file."""

    line: int
    variables: dict[str, str]
    request_id: str | None = None


def _as_variable(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def parse_input_line(number: int, raw: bytes) -> InputLine | str | None:
    """The run of one JSONL line, a problem in words, or None for a blank line."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return f"line {number}: not UTF-8 ({exc.reason} at byte {exc.start})"
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(obj, dict):
        return f"line {number}: expected a JSON object of variables, got {type(obj).__name__}"
    request_id = obj.pop(REQUEST_ID_KEY, None)
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        return f"line {number}: {REQUEST_ID_KEY} must be a non-empty string"
    if request_id is not None and len(request_id) > MAX_REQUEST_ID:
        return f"line {number}: {REQUEST_ID_KEY} is longer than {MAX_REQUEST_ID} characters"
    variables = {str(k): _as_variable(v) for k, v in obj.items()}
    return InputLine(number, variables, request_id)


def read_inputs(stream: BinaryIO) -> tuple[list[InputLine], list[str]]:
    """Every run of a JSONL stream, and the problems found (one per bad line)."""
    lines: list[InputLine] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(stream, start=1):
        parsed = parse_input_line(number, raw)
        if isinstance(parsed, str):
            problems.append(parsed)
        elif parsed is not None:
            if parsed.request_id is not None:
                if parsed.request_id in seen:
                    problems.append(
                        f"line {number}: {REQUEST_ID_KEY} {parsed.request_id!r} repeats "
                        f"line {seen[parsed.request_id]}"
                    )
                seen.setdefault(parsed.request_id, number)
            lines.append(parsed)
    return lines, problems


def check_against_template(lines: Sequence[InputLine], template: PromptTemplate) -> list[str]:
    """Lines whose variables are not exactly the template's declared ones."""
    declared = set(template.variables)
    problems = []
    for item in lines:
        missing = [v for v in template.variables if v not in item.variables]
        extra = sorted(set(item.variables) - declared)
        if missing:
            problems.append(f"line {item.line}: missing variables {', '.join(missing)}")
        if extra:
            problems.append(
                f"line {item.line}: variables {', '.join(extra)} are not declared by "
                f"template {template.name} v{template.version}"
            )
    return problems


_LINE = re.compile(r"^line (\d+):")


def _line_of(problem: str) -> int:
    match = _LINE.match(problem)
    return int(match.group(1)) if match else 0


def derived_request_ids(batch_id: str, lines: Sequence[InputLine]) -> list[str]:
    """Each line's idempotency key: its own ``_request_id``, else one made of the
    batch id, a hash of its variables and how often they occurred before."""
    seen: Counter[str] = Counter()
    keys = []
    for item in lines:
        if item.request_id is not None:
            keys.append(item.request_id)
            continue
        canonical = json.dumps(item.variables, sort_keys=True, ensure_ascii=False)
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:24]
        seen[digest] += 1
        keys.append(f"{batch_id}/{digest}/{seen[digest]}")
    return keys


_RUN_FIELD = re.compile(r"^runs\[(\d+)\]\.?(.*)$")


def violations_by_line(exc: InvalidArgumentError, chunk: Sequence[InputLine]) -> list[str]:
    """The error's field violations with ``runs[i]`` replaced by the file's line."""
    problems = []
    for v in exc.field_violations:
        match = _RUN_FIELD.match(v.field)
        if match and int(match.group(1)) < len(chunk):
            item = chunk[int(match.group(1))]
            where = f"line {item.line}" + (f" ({match.group(2)})" if match.group(2) else "")
            problems.append(f"{where}: {v.description}")
        else:
            problems.append(f"{v.field}: {v.description}")
    return problems or [exc.message]


def _read_file(path: str) -> tuple[list[InputLine], list[str]]:
    if path == "-":
        return read_inputs(sys.stdin.buffer)
    try:
        with Path(path).open("rb") as f:
            return read_inputs(f)
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")


class Inputs:
    """A JSONL file of runs, read once; checked against a template in the same
    report, so a JSON error on one line never hides a variable error on another."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines, self._problems = _read_file(path)
        if not self.lines and not self._problems:
            fail(f"{path}: no runs (the file is empty)")

    def check(self, template: PromptTemplate, *, note: str = "") -> list[InputLine]:
        """The runs, or exit 1 naming every bad line (nothing is sent)."""
        problems = sorted(
            [*self._problems, *check_against_template(self.lines, template)], key=_line_of
        )
        if problems:
            _fail_lines(self.path, problems, note)
        return self.lines


def _fail_lines(path: str, problems: Sequence[str], note: str = "") -> NoReturn:
    shown = list(problems[:MAX_PROBLEMS_SHOWN])
    if len(problems) > MAX_PROBLEMS_SHOWN:
        shown.append(f"… and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    if note:
        shown.append(note)
    bad = len({_line_of(p) for p in problems})
    fail(f"{path}: {bad} bad line{'s' if bad != 1 else ''}; nothing was sent", shown)


# ------------------------------------------------------------- sending runs


# Variables per BatchCreateRuns call: a quarter of the server's default request
# limit (MAX_REQUEST_BYTES, 4 MiB), leaving the prompts rendered from them room
# under its per-call cap (16 MiB of variables and prompts together).
CHUNK_BYTES = 1024 * 1024


def _line_bytes(item: InputLine) -> int:
    return 64 + sum(len(k.encode()) + len(v.encode()) + 16 for k, v in item.variables.items())


def _chunks(lines: Sequence[InputLine], size: int) -> Iterator[Sequence[InputLine]]:
    """At most `size` lines and about CHUNK_BYTES of variables per chunk (a
    single bigger line goes alone)."""
    start, total = 0, 0
    for end, item in enumerate(lines):
        total += _line_bytes(item)
        if end > start and (end - start >= size or total > CHUNK_BYTES):
            yield lines[start:end]
            start, total = end, _line_bytes(item)
    if start < len(lines):
        yield lines[start:]


async def send_runs(
    client: AsyncClient, batch_id: str, lines: Sequence[InputLine], chunk: int
) -> int:
    """BatchCreateRuns in chunks of ``chunk`` (each atomic); returns how many
    runs are new in the batch (resent lines return the runs they created
    before). A rejected chunk exits 1 naming its bad lines; earlier chunks stay."""
    from nex.collector.client import InvalidArgumentError

    keys = dict(zip((i.line for i in lines), derived_request_ids(batch_id, lines), strict=True))
    before = (await client.get_batch(batch_id)).counts.total
    sent = 0
    with out.status(f"queueing {len(lines):,} runs…") as status:
        for part in _chunks(lines, chunk):
            runs = [RunInput(i.variables, keys[i.line]) for i in part]
            try:
                await client.create_runs(batch_id, runs)
            except InvalidArgumentError as exc:
                status.stop()
                _report_rejected_chunk(exc, batch_id, part, sent)
            sent += len(part)
            status.update(f"queued {sent:,} / {len(lines):,} runs…")
    new = (await client.get_batch(batch_id)).counts.total - before
    again = f" ({sent - new:,} were there already)" if new < sent else ""
    out.print(f"[green]✓[/green] queued {new:,} runs in batch [bold]{batch_id}[/bold]{again}")
    return new


def _report_rejected_chunk(
    exc: InvalidArgumentError, batch_id: str, part: Sequence[InputLine], sent: int
) -> NoReturn:
    from nex.collector.client import InvalidArgumentError

    print_collector_error(
        InvalidArgumentError(exc.code, exc.message, reason=exc.reason, field_violations=())
    )
    for problem in violations_by_line(exc, part):
        err.print(f"  {escape(problem)}")
    first, last = part[0].line, part[-1].line
    done = f"{sent:,} runs from earlier lines are queued" if sent else "no run was created"
    err.print(
        f"  [dim]lines {first}-{last} were rejected together; {done} in batch {batch_id}. "
        "Fix the lines and send the file again with "
        f"`nex-collector batch add {batch_id} --inputs FILE` (runs already queued are not "
        "repeated).[/dim]"
    )
    raise typer.Exit(1)


# ---------------------------------------------------------------- rendering


def _params_text(params: GenerationParams) -> str:
    parts = [
        f"{name}={value}"
        for name, value in (
            ("temperature", params.temperature),
            ("max_tokens", params.max_tokens),
            ("top_p", params.top_p),
            ("top_logprobs", params.top_logprobs),
            ("seed", params.seed),
        )
        if value is not None
    ]
    if params.stop:
        parts.append(f"stop={list(params.stop)}")
    return ", ".join(parts) or "provider defaults"


def _counts_text(batch: TeacherBatch) -> Text:
    c = batch.counts
    text = Text()
    for status in (
        RunStatus.QUEUED,
        RunStatus.RUNNING,
        RunStatus.COMPLETED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    ):
        n = getattr(c, status.name.lower())
        text.append(f"{status.name.lower()} {n:,}", style=run_style(status) if n else "dim")
        text.append("  ")
    text.append(f"total {c.total:,}", style="bold")
    return text


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


def _provider_jobs_text(batch: TeacherBatch) -> Text:
    text = Text()
    for i, j in enumerate(batch.provider_jobs):
        if i:
            text.append("\n")
        text.append(f"{j.id} ", style="bold")
        text.append(f"{j.provider_job_id or '(not confirmed)'} {j.state} ")
        text.append(
            f"{j.request_completed:,} done, {j.request_failed:,} failed of {j.request_total:,}"
        )
        if j.error is not None:
            text.append(f" {j.error.code}: {j.error.message}", style="red")
    return text


def batch_summary(batch: TeacherBatch) -> Table:
    """A key/value table of a batch: what it is, runs per status, usage."""
    table = Table(title=f"batch {batch.name}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", batch.id)
    table.add_row("status", status_text(batch.status))
    table.add_row("teacher", f"{batch.provider} / {batch.model}")
    table.add_row("params", _params_text(batch.params))
    table.add_row("template", batch.template_id)
    if batch.context_ref_id:
        table.add_row("context ref", batch.context_ref_id)
    if batch.labels:
        table.add_row("labels", ", ".join(f"{k}={v}" for k, v in sorted(batch.labels.items())))
    table.add_row("runs", _counts_text(batch))
    table.add_row("usage", fmt_usage(batch.usage))
    if batch.execution_mode in (ExecutionMode.PROVIDER_BATCH, ExecutionMode.AUTO):
        mode = "provider-batch" if batch.execution_mode is ExecutionMode.PROVIDER_BATCH else "auto"
        table.add_row("mode", mode)
        if batch.provider_jobs:
            table.add_row("provider jobs", _provider_jobs_text(batch))
        table.add_row(
            "saved",
            f"${batch.provider_batch_saved_usd:,.6f} against the online price "
            f"(${batch.usage.cost_usd + batch.provider_batch_saved_usd:,.6f})",
        )
    if batch.deadline_time is not None:
        table.add_row("deadline", fmt_time(batch.deadline_time))
    if batch.max_cost_usd is not None:
        b = batch.budget
        table.add_row(
            "budget",
            f"${b.spent_usd:,.6f} spent + ${b.reserved_usd:,.6f} reserved "
            f"of ${batch.max_cost_usd:,.6f} (queued worst case ${b.queued_worst_case_usd:,.6f})",
        )
    if batch.pause is not None:
        table.add_row("paused", f"{batch.pause.reason}: {escape(batch.pause.message)}")
    table.add_row("created", fmt_time(batch.create_time))
    return table


def runs_table(runs: Sequence[TeacherRun], title: str) -> Table:
    """One line per run: id, status, finish reason, output tokens, output (or
    error) cut to the terminal's width."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("finish", no_wrap=True)
    table.add_column("out", justify="right", no_wrap=True)
    table.add_column("output / error", no_wrap=True)
    room = max(12, out.width - ID_WIDTH - 40)
    for run in runs:
        detail = (
            Text(f"{run.error.code} ", style="red") + Text(shorten(run.error.message, room))
            if run.error
            else Text(shorten(run.output_text, room))
        )
        table.add_row(
            run.id,
            status_text(run.status),
            run.finish_reason or "-",
            f"{run.usage.output_tokens:,}",
            detail[:room],
        )
    return table


async def watch_progress(
    client: AsyncClient, batch_id: str, *, follow: bool = False, refresh: float = 1.0
) -> TeacherBatch:
    """The live progress display until the batch watch ends; returns the batch."""
    from nex.collector.client.progress import watch_batch_progress

    batch = await watch_batch_progress(
        client, batch_id, out, follow=follow, refresh_interval=refresh
    )
    if not out.is_terminal:
        out.line()  # the last frame of a non-terminal Live ends without a newline
    return batch


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


def tokens_table(run: TeacherRun, limit: int, alternatives: int = 4) -> Table:
    """The first ``limit`` output tokens with their logprob and top alternatives."""
    table = Table(
        title=f"first {min(limit, len(run.tokens))} of {len(run.tokens)} tokens",
        title_justify="left",
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("token")
    table.add_column("logprob", justify="right")
    table.add_column("p", justify="right")
    table.add_column("top alternatives (p)", overflow="fold")
    for i, tok in enumerate(run.tokens[:limit]):
        alts = ", ".join(
            f"{t.token!r} {math.exp(t.logprob):.2f}" for t in tok.top_logprobs[:alternatives]
        )
        table.add_row(
            str(i),
            escape(repr(tok.token)),
            f"{tok.logprob:.3f}",
            f"{math.exp(tok.logprob):.2f}",
            escape(alts) or "-",
        )
    return table


def run_panel(run: TeacherRun, tokens: int = 12) -> RenderableType:
    """A run: its prompt, output, facts, scores and first tokens with logprobs."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("status", status_text(run.status))
    facts.add_row("batch", run.batch_id)
    facts.add_row("finish reason", run.finish_reason or "-")
    facts.add_row("usage", fmt_usage(run.usage))
    facts.add_row("latency", f"{run.latency_ms:,} ms · attempt {run.attempt}")
    if run.error:
        facts.add_row("error", Text(f"{run.error.code}: {run.error.message}", style="red"))
    if run.scores:
        facts.add_row("scores", ", ".join(f"{k}={v:.4g}" for k, v in sorted(run.scores.items())))
    prompt = Text()
    for i, m in enumerate(run.messages):
        prompt.append(("\n" if i else "") + f"{m.role}: ", style="bold magenta")
        prompt.append(m.content)
    parts: list[RenderableType] = [
        facts,
        Panel(prompt if prompt else Text("-"), title="prompt", title_align="left"),
        Panel(Text(run.output_text or "-"), title="output", title_align="left"),
    ]
    if run.tokens and tokens > 0:
        parts.append(tokens_table(run, tokens))
    elif run.status == RunStatus.COMPLETED and not run.has_logprobs:
        parts.append(Text("this teacher returned no logprobs", style="dim"))
    return Panel(Group(*parts), title=f"run {run.id}", title_align="left")


# ----------------------------------------------------------------- commands


@template_app.command("create")
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


@template_app.command("list")
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


ProviderOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        help="the teacher: openai, anthropic, mock, or a TEACHERS_FILE name "
        "(see `nex-collector teachers`)",
    ),
]


@batch_app.command("create")
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


@batch_app.command("add")
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


@batch_app.command("watch")
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


@batch_app.command("show")
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


@batch_app.command("list")
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


@batch_app.command("cancel")
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


@run_app.command("show")
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


@batch_app.command("update")
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
    for part in _chunks(lines, MAX_CHUNK):
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
