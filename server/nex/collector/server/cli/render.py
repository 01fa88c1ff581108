"""How the CLI shows things: status colours, numbers and times, the tables
and panels of batches, runs and datasets (score quantiles, a histogram,
file checks), and the live progress of a batch or a dataset build."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from nex.collector.client import (
    BatchStatus,
    DatasetManifest,
    DatasetStatus,
    DatasetVerification,
    ExecutionMode,
    GenerationParams,
    RunStatus,
    TeacherBatch,
    TeacherRun,
    Usage,
)

from . import dataset_files
from .consoles import out
from .errors import fail
from .filter_syntax import format_filter

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = [
    "ID_WIDTH",
    "PREFERRED_SCORE",
    "batch_summary",
    "dataset_view",
    "drops_table",
    "files_table",
    "fmt_bytes",
    "fmt_time",
    "fmt_usage",
    "histogram",
    "quantiles",
    "quantiles_table",
    "remote_verify_view",
    "run_panel",
    "run_style",
    "runs_table",
    "shorten",
    "status_text",
    "summary_table",
    "tokens_table",
    "verify_view",
    "wait_with_progress",
    "watch_progress",
]

ID_WIDTH = 30
"""Characters of a server id (``bat_`` + 26)."""

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
PREFERRED_SCORE = "mean_logprob"
BAR_BLOCKS = " ▏▎▍▌▋▊▉█"

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


# ------------------------------------------------------------ batches and runs


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


# ------------------------------------------------------------------ datasets


def quantiles(values: Sequence[float], qs: Sequence[float] = QUANTILES) -> list[float]:
    """Linear-interpolation quantiles (numpy's default) of a non-empty sequence."""
    ordered = sorted(values)
    last = len(ordered) - 1
    result = []
    for q in qs:
        pos = q * last
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        result.append(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    return result


def quantiles_table(scores: Mapping[str, Sequence[float]]) -> Table:
    table = Table(title="score quantiles", title_justify="left")
    table.add_column("score")
    table.add_column("n", justify="right")
    for q in QUANTILES:
        table.add_column(f"p{round(q * 100)}", justify="right")
    for name, values in scores.items():
        table.add_row(name, f"{len(values):,}", *(f"{v:.4g}" for v in quantiles(values)))
    return table


def _bar(count: int, peak: int, width: int) -> str:
    eighths = round(count / peak * width * 8) if peak else 0
    full, rest = divmod(eighths, 8)
    return "█" * full + (BAR_BLOCKS[rest] if rest else "")


def _edge_format(lo: float, hi: float, step: float) -> str:
    """A format for bin edges with just enough decimals to tell them apart."""
    if max(abs(lo), abs(hi)) >= 1e7 or 0 < step < 1e-6:
        return "{:.4g}"
    decimals = max(0, 1 - math.floor(math.log10(step))) if step > 0 else 0
    return "{:,.%sf}".replace("%s", str(min(decimals, 6)))


def histogram(name: str, values: Sequence[float], bins: int = 16, width: int = 40) -> Panel:
    """A horizontal histogram of ``values`` in unicode bars, one bar per bin of
    equal width between the smallest and the largest value."""
    lo, hi = min(values), max(values)
    bins = 1 if hi == lo else bins
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / step), bins - 1) if step else 0] += 1
    peak = max(counts)
    edge = _edge_format(lo, hi, step)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", style="dim")
    grid.add_column(style="dim")
    grid.add_column(justify="right", style="dim")
    grid.add_column(style="cyan", no_wrap=True, min_width=width)
    grid.add_column(justify="right")
    for i, count in enumerate(counts):
        start, end = lo + i * step, (lo + (i + 1) * step if i < bins - 1 else hi)
        grid.add_row(
            edge.format(start), "…", edge.format(end), _bar(count, peak, width), f"{count:,}"
        )
    return Panel(grid, title=f"{name}: {len(values):,} values", title_align="left", expand=False)


def summary_table(m: DatasetManifest) -> Table:
    table = Table(title=f"dataset {m.name} {m.version}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("id", m.id)
    table.add_row("status", status_text(m.status))
    if m.error:
        table.add_row("error", Text(f"{m.error.code}: {m.error.message}", style="red"))
    table.add_row("uri", m.uri or "-")
    table.add_row("batches", ", ".join(m.batch_ids))
    if m.context_ref_id:
        table.add_row("context ref", m.context_ref_id)
    table.add_row("filters", "\n".join(format_filter(f) for f in m.filters) or "none")
    if m.status == DatasetStatus.READY:
        c = m.counts
        share = f" ({c.kept / c.total:.0%})" if c.total else ""
        table.add_row("examples", f"{c.kept:,} kept of {c.total:,} runs{share}")
    table.add_row("created", fmt_time(m.create_time))
    if m.ready_time:
        table.add_row("ready", fmt_time(m.ready_time))
    return table


def files_table(m: DatasetManifest) -> Table:
    table = Table(title="files", title_justify="left")
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("size", justify="right")
    table.add_column("sha256", style="dim")
    for f in m.files:
        table.add_row(f.name, f"{f.rows:,}", fmt_bytes(f.bytes), f.sha256[:16] + "…")
    return table


def drops_table(m: DatasetManifest) -> Table:
    c = m.counts
    table = Table(
        title="runs dropped per filter",
        caption="a run counts against the first filter that drops it",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("filter")
    table.add_column("dropped", justify="right")
    table.add_row("", "[dim]runs in the batches[/dim]", f"{c.total:,}")
    for d in c.dropped:
        dropped = f"[red]{d.dropped:,}[/red]" if d.dropped else "[dim]0[/dim]"
        table.add_row(str(d.index), escape(d.filter), dropped)
    table.add_row("", "[bold]kept[/bold]", f"[bold green]{c.kept:,}[/bold green]")
    return table


def dataset_view(
    m: DatasetManifest,
    score: str | None = None,
    bins: int = 16,
    scores: Mapping[str, Sequence[float]] | None = None,
) -> RenderableType:
    """Everything ``dataset show`` prints: summary, files, drops, score
    quantiles and a histogram (the last two from `scores`, see
    ``dataset_files.fetch_scores``, else from the files when they are on this machine)."""
    parts: list[RenderableType] = [summary_table(m)]
    if m.status != DatasetStatus.READY:
        return Group(*parts)
    parts += [files_table(m), drops_table(m)]
    if scores is None:
        directory = dataset_files.local_dir(m.uri)
        if directory is None:
            parts.append(Text(f"the files are not on this machine ({m.uri}): no score view", "dim"))
            return Group(*parts)
        scores = dataset_files.read_scores(directory)
    if not scores:
        parts.append(Text("no scores (the dataset is empty)", style="dim"))
        return Group(*parts)
    parts.append(quantiles_table(scores))
    chosen = score or (PREFERRED_SCORE if PREFERRED_SCORE in scores else next(iter(scores)))
    if chosen not in scores:
        parts.append(Text(f"no score {chosen!r}; scores: {', '.join(scores)}", style="yellow"))
    else:
        parts.append(histogram(chosen, scores[chosen], bins))
    return Group(*parts)


async def wait_with_progress(
    client: AsyncClient, manifest: DatasetManifest, wait_s: float, poll: float = 0.5
) -> DatasetManifest:
    """Polls until the build is READY or FAILED, with a spinner and a bar of the
    runs examined so far (when the server reports them); returns the manifest."""
    expected = 0
    for batch_id in manifest.batch_ids:
        expected += (await client.get_batch(batch_id)).counts.completed
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=True,
    )
    deadline = time.monotonic() + wait_s
    with progress:
        task = progress.add_task(f"building {manifest.name} {manifest.version}", total=expected)
        while not manifest.status.is_terminal:
            if time.monotonic() > deadline:
                fail(
                    f"dataset {manifest.id} is still building after {wait_s:g} s",
                    [f"check later with: nex-collector dataset show {manifest.id}"],
                )
            await asyncio.sleep(poll)
            manifest = await client.get_dataset(manifest.id)
            progress.update(task, completed=min(manifest.counts.total, expected or 1))
        progress.update(task, completed=expected)
    return manifest


def verify_view(directory: Path) -> tuple[RenderableType, list[str]]:
    """Checks a dataset folder against its manifest.json: a table of the files
    and the problems found (empty: intact)."""
    from nex.collector.server.parquet.verify import verify_dataset

    problems = verify_dataset(directory)
    try:
        listed = json.loads((directory / "manifest.json").read_text("utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        listed = []
    table = Table(title=f"{directory}", title_justify="left")
    for column in ("file", "rows", "size", "sha256", "check"):
        table.add_column(column, justify="right" if column in ("rows", "size") else "left")
    for entry in listed if isinstance(listed, list) else []:
        if not isinstance(entry, dict):
            continue
        name = str(entry.get("name"))
        bad = any(p.startswith(f"{name}:") for p in problems)
        table.add_row(
            name,
            f"{entry.get('rows', 0):,}",
            fmt_bytes(int(entry.get("bytes", 0))),
            str(entry.get("sha256", ""))[:16] + "…",
            Text("✗ mismatch", "red") if bad else Text("✓ ok", "green"),
        )
    return table, problems


def remote_verify_view(v: DatasetVerification) -> RenderableType:
    """The files of a dataset the server verified where they are stored."""
    table = Table(title=v.dataset.uri or v.dataset.id, title_justify="left")
    for column in ("file", "rows", "size", "sha256", "check"):
        table.add_column(column, justify="right" if column in ("rows", "size") else "left")
    for f in v.dataset.files:
        bad = any(p.startswith(f"{f.name}:") for p in v.problems)
        table.add_row(
            f.name,
            f"{f.rows:,}",
            fmt_bytes(f.bytes),
            f.sha256[:16] + "…",
            Text("✗ mismatch", "red") if bad else Text("✓ ok", "green"),
        )
    return table
