"""Teachers' answers, written straight through asyncpg: the one write every run
makes while its answer is not yet durable, so its latency is what a killed
worker can lose. One `executemany` is one round trip (asyncpg pipelines the
rows and runs them in one implicit transaction), where a unit of work costs
four: the pool's ping, BEGIN, the statement and COMMIT.

Guarded like every run transition: only a run still running at the answer's
attempt takes it; a run that moved on keeps nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from nex.collector.server.db.tables import runs
from nex.collector.server.domain.runs import RunStatus

# What a teacher's answer sets on its run (besides answer_time).
ANSWER_COLUMNS = (
    "output_text",
    "finish_reason",
    "has_logprobs",
    "token_texts",
    "token_logprobs",
    "top_counts",
    "top_tokens",
    "top_logprobs",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
)
_SETS = ", ".join(f"{name} = ${i}" for i, name in enumerate(ANSWER_COLUMNS, start=4))
_STORE = (
    f"UPDATE {runs.name} SET answer_time = $3, {_SETS} "
    f"WHERE id = $1 AND status = '{RunStatus.RUNNING.value}' AND attempt = $2"
)
# A connection PostgreSQL dropped (a restart): the write is tried once more on
# a new one.
_GONE = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)


class AnswerWriter:
    """Used on one event loop only (its pool belongs to the loop that made it)."""

    def __init__(self, database_url: str, *, size: int = 4) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def store(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rows with `b_id`, `b_attempt`, `answer_time` and ANSWER_COLUMNS."""
        if not rows:
            return
        args = [
            (r["b_id"], r["b_attempt"], r["answer_time"], *(r[c] for c in ANSWER_COLUMNS))
            for r in rows
        ]
        pool = await self._open()
        try:
            await pool.executemany(_STORE, args)
        except _GONE:
            await pool.expire_connections()
            await pool.executemany(_STORE, args)

    async def _open(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=self._size
                    )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
