"""``nex-collector dataset …``: build a distilled dataset from batches, wait for
it, and look at it (summary, score quantiles, a histogram), list, verify.

Filters on the command line are ``KIND:key=value,key=value`` (see
``FILTER_HELP``); the Parquet files are read straight from the manifest's
``file://`` uri when the folder is on this machine.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlparse

import typer
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
    BooleanFilter,
    DatasetManifest,
    DatasetStatus,
    DatasetVerification,
    EntropyFilter,
    Filter,
    LengthFilter,
    RegexFilter,
    ScoreFilter,
)

from .common import (
    AddrOpt,
    LinkEvidenceOpt,
    QuietOpt,
    Target,
    TokenOpt,
    err,
    fail,
    fmt_bytes,
    fmt_time,
    out,
    print_id,
    quiet_output,
    resolve_target,
    run_with_client,
    status_text,
)

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = [
    "FILTER_HELP",
    "FilterSyntaxError",
    "app",
    "dataset_view",
    "fetch_scores",
    "format_filter",
    "histogram",
    "local_dir",
    "parse_filter",
    "quantiles",
    "read_scores",
    "remote_verify_view",
    "scores_of",
    "verify_view",
    "wait_with_progress",
]

app = typer.Typer(
    help="Distilled datasets: build from batches, show, list, verify.", no_args_is_help=True
)

FILTER_HELP = """Filters: --filter KIND:key=value,… (repeat; a run is kept when all keep it)

  length:min_chars=10,max_chars=2000      output characters (or min=, max=)
  regex:pattern=^Answer,must_match=true   RE2 search (must_match=false keeps
                                          the runs that do not match)
  entropy:min=0.1,max=2.5                 mean token entropy, in nats
  boolean:name=finish_reason_stop         or finish_reason_length,
                                          has_logprobs, has_output; value=true
  score:name=mean_logprob,min=-1.5,max=0  any score: length_chars,
                                          length_tokens, perplexity,
                                          mean_logprob, mean_entropy, posted
                                          and plug-in scores

Shorthands: regex:^Answer · boolean:finish_reason_stop (value=true) ·
score:perplexity,max=20. A regex pattern may contain commas and '=':
only ',must_match=' starts a new key."""

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
PREFERRED_SCORE = "mean_logprob"
BAR_BLOCKS = " ▏▎▍▌▋▊▉█"

# --------------------------------------------------------------- filter syntax

_KEYS: dict[str, dict[str, type]] = {
    "length": {"min_chars": int, "max_chars": int},
    "regex": {"pattern": str, "must_match": bool},
    "entropy": {"min": float, "max": float},
    "boolean": {"name": str, "value": bool},
    "score": {"name": str, "min": float, "max": float},
}
_ALIASES: dict[str, dict[str, str]] = {"length": {"min": "min_chars", "max": "max_chars"}}
_FIRST_KEY = {"regex": "pattern", "boolean": "name", "score": "name"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class FilterSyntaxError(ValueError):
    """A --filter that does not follow the mini-syntax; the message says why."""


def _convert(kind: str, key: str, raw: str, kind_type: type) -> object:
    value = raw if key == "pattern" else raw.strip()
    if kind_type is bool:
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise FilterSyntaxError(f"{kind}: {key} must be true or false, got {value!r}")
    if kind_type is str:
        return value
    try:
        number = kind_type(value)
    except ValueError:
        raise FilterSyntaxError(
            f"{kind}: {key} must be {'an integer' if kind_type is int else 'a number'}, "
            f"got {value!r}"
        ) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise FilterSyntaxError(f"{kind}: {key} must be a finite number")
    return number


def _split(kind: str, body: str) -> dict[str, str]:
    keys = {**{k: k for k in _KEYS[kind]}, **_ALIASES.get(kind, {})}
    alternatives = "|".join(sorted(map(re.escape, keys), key=len, reverse=True))
    parts = re.split(rf",(?=\s*(?:{alternatives})\s*=)", body)
    values: dict[str, str] = {}
    for i, part in enumerate(parts):
        match = re.match(rf"\s*({alternatives})\s*=(.*)$", part, re.DOTALL)
        if match:
            key, raw = keys[match.group(1)], match.group(2)
        elif i == 0 and kind in _FIRST_KEY and part.strip():
            key, raw = _FIRST_KEY[kind], part
        else:
            known = ", ".join(_KEYS[kind])
            raise FilterSyntaxError(f"{kind}: cannot read {part!r} (keys: {known})")
        if key in values:
            raise FilterSyntaxError(f"{kind}: {key} is given twice")
        values[key] = raw
    return values


def parse_filter(spec: str) -> Filter:
    """``KIND:key=value,…`` → the client's filter (see ``FILTER_HELP``)."""
    kind, sep, body = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _KEYS:
        raise FilterSyntaxError(
            f"unknown filter kind {kind!r} in {spec!r}; use one of {', '.join(_KEYS)}"
        )
    if not sep or not body.strip():
        raise FilterSyntaxError(f"{kind}: give its settings, e.g. {_example(kind)}")
    args = {
        key: _convert(kind, key, raw, _KEYS[kind][key]) for key, raw in _split(kind, body).items()
    }
    return _build(kind, args)


def _example(kind: str) -> str:
    return {
        "length": "length:min_chars=10,max_chars=2000",
        "regex": "regex:pattern=^Answer",
        "entropy": "entropy:max=2.5",
        "boolean": "boolean:name=finish_reason_stop,value=true",
        "score": "score:name=mean_logprob,min=-1.5",
    }[kind]


def _build(kind: str, args: Mapping[str, Any]) -> Filter:
    if kind in ("regex", "boolean", "score"):
        required = _FIRST_KEY[kind]
        if not args.get(required):
            raise FilterSyntaxError(f"{kind}: {required} is required, e.g. {_example(kind)}")
    bounds = [k for k in args if k.startswith(("min", "max"))]
    if kind in ("length", "entropy", "score") and not bounds:
        raise FilterSyntaxError(f"{kind}: give a min and/or a max, e.g. {_example(kind)}")
    low = args.get("min", args.get("min_chars"))
    high = args.get("max", args.get("max_chars"))
    if low is not None and high is not None and low > high:
        raise FilterSyntaxError(f"{kind}: the minimum {low} is above the maximum {high}")
    builders: dict[str, type] = {
        "length": LengthFilter,
        "regex": RegexFilter,
        "entropy": EntropyFilter,
        "boolean": BooleanFilter,
        "score": ScoreFilter,
    }
    result: Filter = builders[kind](**args)
    return result


def parse_filters(specs: Sequence[str]) -> list[Filter]:
    """Every --filter, or a usage error (exit 2) naming the bad one."""
    try:
        return [parse_filter(s) for s in specs]
    except FilterSyntaxError as exc:
        raise typer.BadParameter(str(exc), param_hint="--filter") from None


def _num(value: float | int) -> str:
    return f"{value:g}"


def format_filter(f: Filter) -> str:
    """A filter in the command-line syntax (what ``parse_filter`` reads)."""
    if isinstance(f, RegexFilter):
        return f"regex:pattern={f.pattern},must_match={str(f.must_match).lower()}"
    if isinstance(f, BooleanFilter):
        return f"boolean:name={f.name},value={str(f.value).lower()}"
    pairs: list[tuple[str, str | float | None]]
    if isinstance(f, LengthFilter):
        pairs, kind = [("min_chars", f.min_chars), ("max_chars", f.max_chars)], "length"
    elif isinstance(f, EntropyFilter):
        pairs, kind = [("min", f.min), ("max", f.max)], "entropy"
    else:
        pairs, kind = [("name", f.name), ("min", f.min), ("max", f.max)], "score"
    body = ",".join(
        f"{k}={v if isinstance(v, str) else _num(v)}" for k, v in pairs if v is not None
    )
    return f"{kind}:{body}"


# -------------------------------------------------------------- dataset files


def local_dir(uri: str) -> Path | None:
    """The folder of a ``file://`` uri when it exists on this machine, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    path = Path(unquote(parsed.path))
    return path if path.is_dir() else None


def read_scores(directory: Path) -> dict[str, list[float]]:
    """Finite values per score name from scores.parquet, sorted by name. Reads
    the long layout (example_id, name, value, …) and a wide one (one nullable
    numeric column per score) alike."""
    import pyarrow.parquet as pq

    parts = directory / "scores"  # a dataset built in parts: scores/part-*.parquet
    return scores_of(pq.read_table(parts if parts.is_dir() else directory / "scores.parquet"))


async def fetch_scores(client: AsyncClient, m: DatasetManifest) -> dict[str, list[float]] | None:
    """The scores of a READY dataset, read through the server (ReadDataset), so
    from any machine; None for a dataset that is not ready."""
    if m.status != DatasetStatus.READY:
        return None
    return scores_of(await client.read_dataset(m.id, file="scores", columns=["name", "value"]))


def scores_of(table: Any) -> dict[str, list[float]]:
    """Finite values per score name of a scores table (a pyarrow Table)."""
    import pyarrow as pa

    result: dict[str, list[float]] = {}
    if {"name", "value"} <= set(table.column_names):
        pairs = zip(
            table.column("name").to_pylist(), table.column("value").to_pylist(), strict=True
        )
        for name, value in pairs:
            if value is not None and math.isfinite(value):
                result.setdefault(str(name), []).append(float(value))
    else:
        for field in table.schema:
            if field.name == "example_id" or not (
                pa.types.is_floating(field.type) or pa.types.is_integer(field.type)
            ):
                continue
            values = [
                float(v)
                for v in table.column(field.name).to_pylist()
                if v is not None and math.isfinite(v)
            ]
            if values:
                result[field.name] = values
    return dict(sorted(result.items()))


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


# ----------------------------------------------------------------- rendering


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
    ``fetch_scores``, else from the files when they are on this machine)."""
    parts: list[RenderableType] = [summary_table(m)]
    if m.status != DatasetStatus.READY:
        return Group(*parts)
    parts += [files_table(m), drops_table(m)]
    if scores is None:
        directory = local_dir(m.uri)
        if directory is None:
            parts.append(Text(f"the files are not on this machine ({m.uri}): no score view", "dim"))
            return Group(*parts)
        scores = read_scores(directory)
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


# ----------------------------------------------------------------- commands


@app.command(
    "build",
    help=f"""Build a dataset from batches, wait for READY, show its summary.

The completed runs of every --batch are scored and filtered by the worker;
the command waits with a spinner and a bar (unless --no-wait), then shows
the same summary as `dataset show`.

{FILTER_HELP}""",
)
def build(
    name: Annotated[str, typer.Option("--name", help="dataset name")],
    version: Annotated[str, typer.Option("--version", help="dataset version; never rebuilt")],
    batch: Annotated[list[str], typer.Option("--batch", help="batch id (repeat)")],
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="KIND:key=value,… (repeat; see above)"),
    ] = None,
    request_id: Annotated[str | None, typer.Option("--request-id", help="idempotency key")] = None,
    context_ref: Annotated[
        str | None, typer.Option("--context-ref", help="ContextRef id it serves")
    ] = None,
    link_evidence: LinkEvidenceOpt = False,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="build even when the filters keep no run (else the build fails, version free)",
        ),
    ] = False,
    parts: Annotated[
        int,
        typer.Option(
            "--parts",
            help="split the build into this many parts that several workers write at once",
        ),
    ] = 1,
    wait: Annotated[bool, typer.Option(help="wait for READY and show the summary")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for READY")] = 600.0,
    score: Annotated[str | None, typer.Option(help="score to draw as a histogram")] = None,
    quiet: QuietOpt = False,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    quiet_output(quiet)
    filters = parse_filters(filter_ or [])
    target = resolve_target(addr, token)

    async def action(
        client: AsyncClient,
    ) -> tuple[DatasetManifest, dict[str, list[float]] | None]:
        manifest = await client.build_dataset(
            name,
            version,
            batch,
            filters=filters,
            context_ref_id=context_ref,
            link_evidence=link_evidence,
            request_id=request_id,
            allow_empty=allow_empty,
            parts=parts,
        )
        out.print(f"[green]✓[/green] building dataset [bold]{manifest.id}[/bold]")
        if not wait:
            return manifest, None
        manifest = await wait_with_progress(client, manifest, timeout)
        return manifest, await fetch_scores(client, manifest)

    manifest, scores = run_with_client(target, action)
    if manifest.status != DatasetStatus.FAILED:
        print_id(quiet, manifest.id)
    if not wait:
        out.print(f"follow it with: nex-collector dataset show {manifest.id}")
        return
    out.print(dataset_view(manifest, score, scores=scores))
    if manifest.status == DatasetStatus.READY and manifest.counts.kept == 0:
        err.print("[yellow]warning:[/yellow] the dataset is empty: the filters kept no run")
    if manifest.status == DatasetStatus.FAILED:
        error = manifest.error
        fail(f"the build failed: {error.message if error else 'no reason given'}")


@app.command("show")
def show(
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="dataset id")],
    score: Annotated[
        str | None,
        typer.Option(
            help=f"score to draw as a histogram (default: {PREFERRED_SCORE}, else the first)",
            show_default=False,
        ),
    ] = None,
    bins: Annotated[int, typer.Option(min=1, max=200, help="histogram bars")] = 16,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show a dataset: summary, drops per filter, score quantiles, a histogram.

    The summary holds status, uri and rows per file; then the runs kept and
    dropped per filter, the p0 p25 p50 p75 p100 of every score, and a
    histogram of one score. Quantiles and histogram read scores.parquet
    through the server (ReadDataset): no access to the files is needed."""
    target = resolve_target(addr, token)

    async def action(
        client: AsyncClient,
    ) -> tuple[DatasetManifest, dict[str, list[float]] | None]:
        manifest = await client.get_dataset(dataset_id)
        return manifest, await fetch_scores(client, manifest)

    manifest, scores = run_with_client(target, action)
    out.print(dataset_view(manifest, score, bins, scores=scores))


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Option("--name", help="only this name")] = None,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """List datasets."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[DatasetManifest]:
        return [d async for d in client.list_datasets(name, page_size=200)]

    table = Table(title="datasets", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=12)
    table.add_column("status", no_wrap=True)
    table.add_column("kept / runs", justify="right", no_wrap=True)
    for d in run_with_client(target, action):
        kept = f"{d.counts.kept:,} / {d.counts.total:,}" if d.status == DatasetStatus.READY else "-"
        label = Text(d.name) + Text(f"\n{d.version}", style="dim")
        table.add_row(d.id, label, status_text(d.status), kept)
    out.print(table)


def _local_dataset_dir(ref: str) -> Path | None:
    """A dataset folder named by a path or a file:// uri, or None for an id."""
    path = Path(ref)
    if path.name == "manifest.json" and path.is_file():
        return path.parent
    if path.is_dir():
        return path
    if ref.startswith("file:"):
        directory = local_dir(ref)
        if directory is None:
            fail(f"no such folder: {ref}")
        return directory
    return None


@app.command("verify")
def verify(
    ref: Annotated[
        str, typer.Argument(metavar="ID|PATH", help="dataset id, folder, or its manifest.json")
    ],
    timeout: Annotated[
        float, typer.Option(help="seconds the server may take to check an id's files")
    ] = 600.0,
    addr: AddrOpt = None,
    token: TokenOpt = None,
) -> None:
    """Check a dataset's files against its manifest.json (exit 1 on a mismatch).

    Recomputes every file's sha256, size, row count and schema. For an ID the
    server does it where the files are stored (disk or object store), so it
    works from any machine; a PATH (the folder or its manifest.json) is
    checked here and needs no server."""
    directory = _local_dataset_dir(ref)
    if directory is not None:
        table, problems = verify_view(directory)
        out.print(table)
        if problems:
            fail(f"{len(problems)} problem(s) in {directory}", problems)
        out.print("[green]✓ every file matches manifest.json[/green] (sha256, size, rows, schema)")
        return
    target: Target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> DatasetVerification:
        return await client.verify_dataset(ref, timeout=timeout)

    verification = run_with_client(target, action)
    out.print(remote_verify_view(verification))
    if verification.problems:
        fail(
            f"{len(verification.problems)} problem(s) in {verification.dataset.uri}",
            list(verification.problems),
        )
    out.print("[green]✓ every file matches manifest.json[/green] (sha256, size, rows, schema)")
