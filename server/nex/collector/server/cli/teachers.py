"""`nex-collector teachers`: the teacher endpoints of a running collector,
with their limits, prices and live usage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

from nex.collector.client import TeacherEndpoint, TeacherKind

if TYPE_CHECKING:
    from nex.collector.client import AsyncClient

from .connection import AddrOpt, TokenOpt, resolve_target, run_with_client
from .consoles import out

_KINDS = {
    TeacherKind.OPENAI: "openai",
    TeacherKind.ANTHROPIC: "anthropic",
    TeacherKind.OPENAI_COMPATIBLE: "openai-compatible",
    TeacherKind.MOCK: "mock",
}


def _limit(value: int | None, unit: str) -> str:
    return f"{value:,} {unit}" if value is not None else f"learned {unit}"


def _limits(t: TeacherEndpoint) -> str:
    if t.kind is TeacherKind.MOCK and not any(
        (t.limits.requests_per_min, t.limits.tokens_per_min, t.limits.max_in_flight)
    ):
        return "none"
    lines = [
        _limit(t.limits.requests_per_min, "req/min"),
        _limit(t.limits.tokens_per_min, "tok/min"),
    ]
    if t.limits.max_in_flight is not None:
        lines.append(f"{t.limits.max_in_flight:,} in flight")
    return "\n".join(lines)


def _usage(t: TeacherEndpoint) -> Text:
    u = t.usage
    text = Text(f"{u.calls_per_min:,} calls/min\n{u.tokens_per_min:,} tok/min\n")
    text.append(f"{u.in_flight:,} in flight, {u.waiting_runs:,} waiting")
    if u.rate_limited_per_min:
        text.append(f"\n{u.rate_limited_per_min:,} 429s/min", style="yellow")
    return text


def _prices(t: TeacherEndpoint, most: int = 4) -> str:
    shown = [f"{p.model}: ${p.input_per_mtok:g} / ${p.output_per_mtok:g}" for p in t.prices]
    if len(shown) > most:
        shown = [*shown[:most], f"… {len(t.prices) - most} more"]
    return "\n".join(shown) or "-"


def teachers(addr: AddrOpt = None, token: TokenOpt = None) -> None:
    """List the teacher endpoints: kind, limits, prices (USD per 1M tokens in / out)
    and live usage over every worker. Keys are never shown, only their variable."""
    target = resolve_target(addr, token)

    async def action(client: AsyncClient) -> list[TeacherEndpoint]:
        return await client.list_teachers()

    table = Table(title="teachers", box=box.SIMPLE_HEAD)
    table.add_column("name", no_wrap=True)
    table.add_column("kind / endpoint", overflow="fold")
    table.add_column("limits", no_wrap=True)
    table.add_column("prices in / out", overflow="fold")
    table.add_column("last minute", no_wrap=True)
    for t in run_with_client(target, action):
        where = Text(_KINDS.get(t.kind, "?"))
        if t.base_url:
            where.append(f"\n{t.base_url}", style="dim")
        if t.api_key_env:
            where.append(f"\nkey: ${t.api_key_env}", style="dim")
        if t.problem:
            where.append(f"\n{t.problem}", style="red")
        logprobs = (
            f"logprobs ≤{t.capabilities.max_top_logprobs}"
            if t.capabilities.logprobs
            else "no logprobs"
        )
        where.append(f"\n{logprobs}", style="dim")
        if t.batch.supported:
            where.append(
                f"\nbatch API at {t.batch.price_factor:.0%} price, ≤{t.batch.max_requests:,} "
                "requests/job",
                style="dim",
            )
        table.add_row(t.name, where, _limits(t), _prices(t), _usage(t))
    out.print(table)
