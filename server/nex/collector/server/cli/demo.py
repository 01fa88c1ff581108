"""``nex-collector demo``: a whole collection → dataset run, narrated step by
step, offline on the mock teacher unless told otherwise.

It uses the collector answering at ``--addr`` (a health check) or, when none
does, starts a self-contained one in this process (embedded PostgreSQL and
Redis unless DATABASE_URL / REDIS_URL are set) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nex.collector.client import (
    BooleanFilter,
    DatasetManifest,
    DatasetStatus,
    ExecutionMode,
    Filter,
    GenerationParams,
    LengthFilter,
    Provider,
    RunInput,
    RunStatus,
    RunView,
    TeacherBatch,
)
from nex.collector.server.domain.limits import MAX_RUNS_PER_CALL

from .connection import (
    AddrOpt,
    Target,
    TokenOpt,
    client_tls,
    first_token,
    load_client_settings,
    open_client,
    resolve_target,
)
from .consoles import err, out
from .dataset_files import local_dir
from .errors import fail, show_errors
from .filter_syntax import format_filter
from .options import DEFAULT_MOCK_MODEL
from .render import (
    batch_summary,
    dataset_view,
    fmt_usage,
    run_panel,
    verify_view,
    wait_with_progress,
    watch_progress,
)

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient
    from nex.collector.server.config import Settings

__all__ = ["demo", "demo_prompts", "is_serving"]

DEFAULT_MODELS = {
    Provider.MOCK: DEFAULT_MOCK_MODEL,
    Provider.OPENAI: "gpt-4o-mini",
    Provider.ANTHROPIC: "claude-3-5-haiku-latest",
}
TOPICS = (
    "ocean tides", "photosynthesis", "compound interest", "the TCP handshake",
    "vaccines", "black holes", "sourdough starters", "recursion",
)  # fmt: skip
AUDIENCES = ("a curious child", "a first-year student", "a busy expert")
STYLES = ("in two sentences", "step by step", "with one everyday analogy", "as a tiny story")
SYSTEM = "You are a patient teacher. Speak to {{ audience }}."
USER = "Explain {{ topic }} {{ style }}."
DEMO_FILTERS: tuple[Filter, ...] = (
    LengthFilter(min_chars=40),
    BooleanFilter(name="finish_reason_stop", value=True),
)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


def demo_prompts(count: int) -> list[dict[str, str]]:
    """``count`` varied variable sets: every topic for every audience, styles rotating."""
    pairs = itertools.cycle(itertools.product(AUDIENCES, TOPICS))
    return [
        {"topic": topic, "audience": audience, "style": STYLES[i % len(STYLES)]}
        for i, (audience, topic) in zip(range(count), pairs, strict=False)
    ]


# ------------------------------------------------------------ the collector


def is_serving(target: Target, timeout: float = 1.5) -> bool:
    """Whether a collector answers SERVING to a gRPC health check at ``target``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if target.tls is False:
        channel = grpc.insecure_channel(target.addr)
    else:
        tls = grpc.ssl_channel_credentials() if target.tls is True else target.tls
        channel = grpc.secure_channel(target.addr, tls)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.contextmanager
def collector_for_demo(target: Target, data_dir: Path | None) -> Iterator[Target]:
    """The collector at ``target`` if it answers, else a self-contained one."""
    if is_serving(target):
        out.print(f"Using the collector at [bold]{escape(target.addr)}[/bold].")
        yield target
        return
    settings = _demo_settings(data_dir)
    where = (
        f"embedded PostgreSQL + Redis in {settings.data_dir}"
        if settings.embedded
        else "DATABASE_URL / REDIS_URL"
    )
    out.print(
        f"No collector answers at {escape(target.addr)}: starting a self-contained one "
        f"({escape(where)})."
    )
    from nex.collector.server.testing import CollectorEnvironment, CollectorStartError

    collector = CollectorEnvironment(settings, thread_name="demo-collector")
    try:
        with out.status("starting the collector (the first time takes a few seconds)…"):
            collector.start()  # stops what it started when it fails (or on Ctrl-C)
    except CollectorStartError as exc:
        fail(str(exc))
    try:
        out.print(f"[green]✓[/green] collector running on [bold]{collector.address}[/bold]")
        yield Target(collector.address, target.token or first_token(settings), client_tls(settings))
    finally:
        with out.status("stopping the collector…"):
            collector.stop()


def _demo_settings(data_dir: Path | None) -> Settings:
    from nex.collector.server import logs
    from nex.collector.server.testing import make_settings

    base = load_client_settings()
    # The token(s) and the database come from the environment, as for `serve`.
    settings = make_settings(data_dir or base.data_dir / "demo", token=None)
    logs.configure("WARNING", json_lines=settings.log_json)
    return settings


# ----------------------------------------------------------------- the story


@dataclass
class Story:
    """What the demo made, for the recap at the end."""

    provider: Provider
    model: str
    runs: int
    provider_batch: bool = False
    stamp: str = field(
        default_factory=lambda: time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    )
    step: int = 0
    made: list[tuple[str, str]] = field(default_factory=list)
    failed: bool = False

    def chapter(self, title: str, explanation: str) -> None:
        self.step += 1
        out.print()
        out.rule(f"[bold cyan]{self.step}. {title}", align="left")
        out.print(Text(explanation, style="dim"))

    def note(self, what: str, value: str) -> None:
        self.made.append((what, value))


async def _context_ref(client: AsyncClient, story: Story) -> str | None:
    story.chapter(
        "A NEX context reference",
        "Runs and datasets can point back to the NEX context they serve. The collector "
        "stores the reference (id, version, labels), never the context itself.",
    )
    from nex.collector.client import FailedPreconditionError

    try:
        ref = await client.create_context_ref(
            "demo-context", story.stamp, labels={"source": "nex-collector-demo"}
        )
    except FailedPreconditionError as exc:
        out.print(f"[yellow]skipped[/yellow]: {escape(exc.message)}")
        return None
    out.print(f"[green]✓[/green] context ref [bold]{ref.id}[/bold] → demo-context@{story.stamp}")
    story.note("context ref", ref.id)
    return ref.id


async def _template(client: AsyncClient, story: Story, context_ref_id: str | None) -> str:
    story.chapter(
        "A prompt template",
        "Jinja2, with declared variables; templates are immutable and versioned by name.",
    )
    tmpl = await client.create_template(
        f"demo-explain-{story.stamp}",
        system_template=SYSTEM,
        user_template=USER,
        variables=["topic", "audience", "style"],
        context_ref_id=context_ref_id,
    )
    out.print(f"[green]✓[/green] template [bold]{tmpl.id}[/bold] v{tmpl.version}")
    out.print(f"  system: {escape(SYSTEM)}\n  user:   {escape(USER)}")
    story.note("template", f"{tmpl.id} ({tmpl.name} v{tmpl.version})")
    return tmpl.id


async def _batch(
    client: AsyncClient, story: Story, template_id: str, context_ref_id: str | None
) -> TeacherBatch:
    story.chapter(
        f"A batch of {story.runs} runs on the {story.provider.value} teacher",
        "Each run is one teacher call; top_logprobs=5 keeps every output token's "
        "logprob and its 5 best alternatives (the soft labels). max_tokens=40 cuts "
        "some answers short, which a filter will catch.",
    )
    if story.provider_batch:
        out.print(
            "[dim]--provider-batch: the runs go through the teacher's Batch API as provider "
            "jobs (half the price; the mock's is offline and instant). `batch show` lists "
            "the jobs and what they saved.[/dim]"
        )
    params = GenerationParams(temperature=0.7, max_tokens=40, top_logprobs=5)
    batch = await client.create_batch(
        f"demo-{story.stamp}",
        template_id,
        story.provider.value,
        story.model,
        params=params,
        context_ref_id=context_ref_id,
        labels={"demo": story.stamp},
        execution_mode=ExecutionMode.PROVIDER_BATCH
        if story.provider_batch
        else ExecutionMode.ONLINE,
    )
    prompts = demo_prompts(story.runs)
    await client.create_runs(
        batch.id, [RunInput(v, f"{batch.id}/{i}") for i, v in enumerate(prompts)]
    )
    out.print(
        f"[green]✓[/green] batch [bold]{batch.id}[/bold] ({story.provider.value}/{story.model}); "
        f"queued {len(prompts)} runs in one atomic BatchCreateRuns, e.g."
    )
    for v in prompts[:3]:
        out.print(f"  [dim]{escape(json.dumps(v))}[/dim]", soft_wrap=True)
    return batch


async def _watch(client: AsyncClient, story: Story, batch_id: str) -> TeacherBatch:
    story.chapter(
        "Watching the runs",
        "A resumable WatchRuns stream feeds the bar; usage and cost come from GetBatch.",
    )
    batch = await watch_progress(client, batch_id, refresh=0.5)
    out.print(batch_summary(batch))
    story.note(
        "batch",
        f"{batch.id}: {batch.counts.completed}/{batch.counts.total} completed, "
        f"{fmt_usage(batch.usage)}",
    )
    if batch.counts.completed == 0:
        story.failed = True
        raise DemoError("no run completed, so there is nothing to distil")
    return batch


async def _outputs(client: AsyncClient, story: Story, batch_id: str) -> None:
    story.chapter(
        "Two of the outputs, with their logprobs",
        "Every token is stored with its logprob and the top alternatives at its position.",
    )
    shown = 0
    async for run in client.list_runs(batch_id, status=RunStatus.COMPLETED, page_size=2):
        out.print(run_panel(await client.get_run(run.id, view=RunView.FULL), tokens=6))
        shown += 1
        if shown == 2:
            break
    out.print(f"[dim]more: nex-collector run show RUN_ID · nex-collector batch show {batch_id}")


async def _dataset(client: AsyncClient, story: Story, batch_id: str) -> DatasetManifest | None:
    story.chapter(
        "Distilling a dataset",
        "Completed runs are scored and filtered, then written as Parquet files with a "
        "checksummed manifest. Filters: " + " · ".join(map(format_filter, DEMO_FILTERS)),
    )
    from nex.collector.client import UnimplementedError

    try:
        manifest = await client.build_dataset(
            f"demo-{story.stamp}", "v1", [batch_id], filters=DEMO_FILTERS
        )
    except UnimplementedError:
        out.print(
            "[yellow]note:[/yellow] this collector does not offer DatasetService yet "
            "(UNIMPLEMENTED), so the demo stops before the dataset."
        )
        return None
    out.print(f"[green]✓[/green] BuildDataset accepted: [bold]{manifest.id}[/bold] (building)")
    manifest = await wait_with_progress(client, manifest, wait_s=300)
    out.print(dataset_view(manifest))
    if manifest.status != DatasetStatus.READY:
        story.failed = True
        message = manifest.error.message if manifest.error else "no reason given"
        err.print(f"[bold red]error:[/bold red] the build failed: {escape(message)}")
        return None
    story.note(
        "dataset",
        f"{manifest.id}: {manifest.name} {manifest.version}, "
        f"{manifest.counts.kept}/{manifest.counts.total} runs kept",
    )
    return manifest


def _verify_and_point(story: Story, manifest: DatasetManifest) -> None:
    story.chapter(
        "Checking the files and reading them",
        "manifest.json holds each file's sha256, size and rows; `nex-collector dataset "
        "verify` recomputes them.",
    )
    directory = local_dir(manifest.uri)
    if directory is None:
        out.print(f"the files live with the collector: {escape(manifest.uri)} (not verified here)")
        return
    table, problems = verify_view(directory)
    out.print(table)
    if problems:
        story.failed = True
        for problem in problems:
            err.print(f"  [red]✗[/red] {escape(problem)}")
        return
    out.print("[green]✓ every file matches manifest.json[/green]")
    story.note("files", str(directory))
    d = str(directory)
    python = _this_python()
    out.print("\nThe Parquet files join on example_id. Try (DuckDB and pyarrow, both installed):")
    out.print(
        f"  {python} -c \"import duckdb; x = duckdb.read_parquet('{d}/examples.parquet'); "
        f"t = duckdb.read_parquet('{d}/targets.parquet'); duckdb.sql('SELECT x.teacher_model, "
        "t.y_text FROM x JOIN t USING (example_id) LIMIT 5').show()\"",
        soft_wrap=True,
        markup=False,
    )
    out.print(
        f'  {python} -c "import pyarrow.parquet as pq; '
        f"print(pq.read_table('{d}/targets.parquet', columns=['example_id', 'y_text']))\"",
        soft_wrap=True,
        markup=False,
    )


def _this_python() -> str:
    """This interpreter (it has duckdb and pyarrow), relative when under the
    current folder (``.venv/bin/python``)."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return shlex.quote(str(Path(os.path.abspath(exe)).relative_to(Path.cwd())))
    return shlex.quote(str(exe))


def _recap(story: Story) -> None:
    out.print()
    table = Table(title="what the demo made", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for what, value in story.made:
        table.add_row(what, escape(value))
    out.print(table)


async def _tell(target: Target, story: Story) -> None:
    client = await open_client(target)
    try:
        context_ref_id = await _context_ref(client, story)
        template_id = await _template(client, story, context_ref_id)
        batch = await _batch(client, story, template_id, context_ref_id)
        await _watch(client, story, batch.id)
        await _outputs(client, story, batch.id)
        manifest = await _dataset(client, story, batch.id)
        if manifest is not None:
            _verify_and_point(story, manifest)
        _recap(story)
    finally:
        await client.close()


def demo(
    addr: AddrOpt = None,
    token: TokenOpt = None,
    provider: Annotated[
        Provider, typer.Option("--provider", help="the teacher", case_sensitive=False)
    ] = Provider.MOCK,
    model: Annotated[
        str | None,
        typer.Option(
            help="teacher model (default: mock-teacher, gpt-4o-mini or claude-3-5-haiku-latest)",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", min=1, max=MAX_RUNS_PER_CALL, help="runs in the batch")
    ] = 24,
    provider_batch: Annotated[
        bool,
        typer.Option(
            "--provider-batch",
            help="send the runs through the teacher's Batch API (half price; the mock "
            "has an offline one)",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="data directory of a self-contained collector (default: DATA_DIR/demo)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a whole collection → dataset story, narrated, offline on the mock teacher.

    The steps: a context ref, a template, a batch of varied prompts on the
    (offline, deterministic) mock teacher, live progress, outputs with
    logprobs, a filtered dataset, its summary and histogram, verified
    checksums, and where the Parquet files are.

    Uses the collector at --addr when one answers there; otherwise starts a
    self-contained one in this process (embedded PostgreSQL + Redis in
    DATA_DIR/demo unless DATABASE_URL / REDIS_URL are set) and stops it at the end."""
    story = Story(provider, model or DEFAULT_MODELS[provider], runs, provider_batch)
    with collector_for_demo(resolve_target(addr, token), data_dir) as target:
        try:
            with show_errors(target):
                asyncio.run(_tell(target, story))
        except DemoError as exc:
            fail(str(exc))
    if story.failed:
        raise typer.Exit(1)
    out.print("[bold green]demo complete[/bold green]")
