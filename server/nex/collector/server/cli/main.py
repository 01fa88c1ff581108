"""`nex-collector`: the operator's commands (dev, serve, worker, migrate) and a
person's commands at a terminal (demo, template, batch, run, dataset, context,
evidence)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from nex.collector.server.cli import (
    batches,
    consoles,
    contexts,
    datasets,
    evidence,
    runs,
    templates,
)
from nex.collector.server.cli.demo import demo
from nex.collector.server.cli.teachers import teachers
from nex.collector.server.worker.processes import default_count

if TYPE_CHECKING:
    from nex.collector.server.api.server import GrpcServer
    from nex.collector.server.bootstrap import Container
    from nex.collector.server.config import Settings

app = typer.Typer(
    name="nex-collector",
    help="Collect teacher-model outputs and build distillation datasets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _before_each_command() -> None:
    # --quiet silences the shared console for one command; the next command
    # run in this process (tests invoke the app many times) talks again.
    consoles.out.quiet = False


_CLIENT_PANEL = "Client commands (talk to a running collector)"
app.command(rich_help_panel=_CLIENT_PANEL)(demo)
app.command(rich_help_panel=_CLIENT_PANEL)(teachers)
app.add_typer(templates.app, name="template", rich_help_panel=_CLIENT_PANEL)
app.add_typer(batches.app, name="batch", rich_help_panel=_CLIENT_PANEL)
app.add_typer(runs.app, name="run", rich_help_panel=_CLIENT_PANEL)
app.add_typer(datasets.app, name="dataset", rich_help_panel=_CLIENT_PANEL)
app.add_typer(contexts.app, name="context", rich_help_panel=_CLIENT_PANEL)
app.add_typer(evidence.app, name="evidence", rich_help_panel=_CLIENT_PANEL)

AddrOpt = Annotated[
    str | None, typer.Option("--addr", help="host:port to serve gRPC on [NEX_COLLECTOR_ADDR]")
]
DataDirOpt = Annotated[Path | None, typer.Option("--data-dir", help="data directory [DATA_DIR]")]


def settings_from(addr: str | None = None, data_dir: Path | None = None) -> Settings:
    from nex.collector.server import logs
    from nex.collector.server.config import ConfigError, load_settings

    overrides: dict[str, object] = {}
    if addr:
        overrides["NEX_COLLECTOR_ADDR"] = addr
    if data_dir:
        overrides["DATA_DIR"] = data_dir
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    logs.configure(settings.log_level, json_lines=settings.log_json)
    return settings


@contextlib.contextmanager
def _startup_errors() -> Iterator[None]:
    """A process that cannot start says why in one line, not a traceback."""
    from nex.collector.server.bootstrap import StartupError
    from nex.collector.server.embedded import EmbeddedUnavailableError

    try:
        yield
    except (StartupError, EmbeddedUnavailableError) as exc:
        console.print(f"[red]cannot start:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None


def _run(
    settings: Settings, *, serve: bool, work: bool, migrate: bool, worker_processes: int = 0
) -> None:
    from nex.collector.server.runtime import PRIVATE_UMASK, run

    # Everything written under DATA_DIR (datasets, embedded PostgreSQL and Redis)
    # stays private to the service's user and group.
    os.umask(PRIVATE_UMASK)

    def ready(container: Container, server: GrpcServer | None) -> None:
        where = (
            "embedded PostgreSQL + Redis in " + str(settings.data_dir)
            if settings.embedded
            else "DATABASE_URL / REDIS_URL"
        )
        parts = []
        if server is not None:
            parts.append(f"gRPC on {server.address}")
        if work:
            parts.append("worker running")
        if worker_processes:
            parts.append(f"{worker_processes} worker process{'es' if worker_processes > 1 else ''}")
        if settings.metrics_addr:
            parts.append(f"metrics on http://{settings.metrics_addr}/metrics")
        console.print(
            f"[green]nex-collector ready[/green]: {', '.join(parts)} ({where}); Ctrl-C stops"
        )

    main = run(
        settings,
        serve=serve,
        work=work,
        migrate=migrate,
        worker_processes=worker_processes,
        ready=ready,
    )
    if serve:
        with _startup_errors():
            asyncio.run(main)
    else:
        # A worker process is all asyncio networking (teacher HTTP, PostgreSQL,
        # Redis): uvloop's event loop is cheaper per run. Dataset builds make
        # millions of short-lived containers: with the default gen-0 threshold
        # (700) a quarter of a build went to the cyclic garbage collector.
        import gc

        import uvloop

        gc.freeze()
        gc.set_threshold(50_000, 10, 10)

        with _startup_errors(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)


@app.command()
def dev(
    addr: AddrOpt = None,
    data_dir: DataDirOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="worker processes beside the server's (0: the worker runs in the "
            "server's own process)",
            show_default="one per core, at most 4",
        ),
    ] = None,
) -> None:
    """Embedded PostgreSQL + Redis (unless DATABASE_URL/REDIS_URL are set), migrations,
    the server and its workers, in the foreground."""
    _run(
        settings_from(addr, data_dir),
        serve=True,
        work=workers == 0,
        migrate=True,
        worker_processes=default_count() if workers is None else workers,
    )


@app.command()
def serve(
    addr: AddrOpt = None,
    data_dir: DataDirOpt = None,
    migrate: Annotated[bool, typer.Option(help="apply migrations first")] = False,
) -> None:
    """The gRPC server only."""
    _run(settings_from(addr, data_dir), serve=True, work=False, migrate=migrate)


@app.command()
def worker(data_dir: DataDirOpt = None) -> None:
    """An arq worker: calls teachers, builds datasets, delivers evidence."""
    _run(settings_from(None, data_dir), serve=False, work=True, migrate=False)


@app.command()
def migrate(data_dir: DataDirOpt = None) -> None:
    """Brings the database schema to the newest migration."""
    settings = settings_from(None, data_dir)

    from nex.collector.server.bootstrap import migrate_database

    with _startup_errors():
        asyncio.run(migrate_database(settings))
    console.print("[green]schema is up to date[/green]")


# typer vendors click; its usage error is BadParameter's base class.
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def main() -> None:
    """The console entry point: a mistyped command gets ``error: …`` like every
    other failure of the CLI, after click's usage line."""
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:
        usage: Any = exc  # click's UsageError: ctx, format_message(), exit_code
        if usage.ctx is not None:
            console.print(usage.ctx.get_usage(), markup=False, highlight=False)
            console.print(
                f"Try '{usage.ctx.command_path} {usage.ctx.help_option_names[0]}' for help.",
                markup=False,
                highlight=False,
            )
        console.print(f"[bold red]error:[/bold red] {escape(usage.format_message())}")
        raise SystemExit(usage.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    raise SystemExit(code if isinstance(code, int) else 0)
