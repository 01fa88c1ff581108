"""``nex-collector dataset …``: build a distilled dataset from batches, wait for
it, and look at it (summary, score quantiles, a histogram), list, verify.

Filters on the command line are ``KIND:key=value,key=value`` (see
``filter_syntax``); the Parquet files are read straight from the manifest's
``file://`` uri when the folder is on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from nex.collector.client import DatasetManifest, DatasetStatus, DatasetVerification

from . import dataset_files
from .connection import AddrOpt, Target, TokenOpt, resolve_target, run_with_client
from .consoles import err, out
from .dataset_files import fetch_scores
from .errors import fail
from .filter_syntax import FILTER_HELP, parse_filters
from .options import LinkEvidenceOpt, QuietOpt, print_id, quiet_output
from .render import (
    PREFERRED_SCORE,
    dataset_view,
    remote_verify_view,
    status_text,
    verify_view,
    wait_with_progress,
)

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

__all__ = ["app"]

app = typer.Typer(
    help="Distilled datasets: build from batches, show, list, verify.", no_args_is_help=True
)


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
        directory = dataset_files.local_dir(ref)
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
