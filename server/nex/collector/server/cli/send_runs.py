"""Queueing a file's runs in a batch: BatchCreateRuns calls that fit the
server's request limit, an idempotency key per line (so a file sent again
creates only the missing runs), a rejected chunk reported by file line."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.markup import escape

from nex.collector.client import RunInput
from nex.collector.server.domain.limits import MAX_RUNS_PER_CALL

from .consoles import err, out
from .errors import print_collector_error
from .inputs import InputLine

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient, InvalidArgumentError

__all__ = [
    "CHUNK_BYTES",
    "MAX_CHUNK",
    "chunked",
    "derived_request_ids",
    "send_runs",
    "violations_by_line",
]

MAX_CHUNK = MAX_RUNS_PER_CALL
"""The most runs one BatchCreateRuns call may carry."""


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


# Variables per BatchCreateRuns call: a quarter of the server's default request
# limit (MAX_REQUEST_BYTES, 4 MiB), leaving the prompts rendered from them room
# under its per-call cap (16 MiB of variables and prompts together).
CHUNK_BYTES = 1024 * 1024


def _line_bytes(item: InputLine) -> int:
    return 64 + sum(len(k.encode()) + len(v.encode()) + 16 for k, v in item.variables.items())


def chunked(lines: Sequence[InputLine], size: int) -> Iterator[Sequence[InputLine]]:
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
        for part in chunked(lines, chunk):
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
