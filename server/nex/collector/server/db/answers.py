"""Teachers' answers, written straight through asyncpg: the one write every run
makes while its answer is not yet durable, so its latency is what a killed
worker can lose. One `executemany` is one round trip (asyncpg pipelines the
rows and runs them in one implicit transaction), where a unit of work costs
four: the pool's ping, BEGIN, the statement and COMMIT.

Guarded like every run transition: only a run still running at the answer's
attempt takes it; a run that moved on keeps nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from nex.collector.server.db.tables import runs
from nex.collector.server.domain.runs import Answer, RunAnswer, RunStatus
from nex.collector.server.domain.teacher import TokenLogprobs
from nex.collector.server.domain.validation import storable_text, storable_texts

# An answer's logprobs (see `tokens_values`).
TOKEN_COLUMNS = ("token_texts", "token_logprobs", "top_counts", "top_tokens", "top_logprobs")
# What a teacher's answer sets on its run (besides answer_time), in the order
# `answer_values` gives them.
ANSWER_COLUMNS = (
    "output_text",
    "finish_reason",
    "has_logprobs",
    *TOKEN_COLUMNS,
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
)
_NO_TOKENS = (None,) * len(TOKEN_COLUMNS)
_NO_ANSWER = (None, None, False, *_NO_TOKENS, 0, 0, 0.0, 0)
_SETS = ", ".join(f"{name} = ${i}" for i, name in enumerate(ANSWER_COLUMNS, start=4))
_STORE = (
    f"UPDATE {runs.name} SET answer_time = $3, {_SETS} "
    f"WHERE id = $1 AND status = '{RunStatus.RUNNING.value}' AND attempt = $2"
)
# A connection PostgreSQL dropped (a restart): the write is tried once more on
# a new one.
_GONE = (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)


async def _keep(connection: asyncpg.Connection) -> None:
    """A connection goes back to the pool as it is: it only ever runs the one
    UPDATE above (no session state, no LISTEN, no locks), so asyncpg's reset
    (a round trip of `RESET ALL; UNLISTEN *; ...` per release) has nothing to undo."""


class AnswerWriter:
    """Used on one event loop only (its pool belongs to the loop that made it)."""

    def __init__(self, database_url: str, *, size: int = 4) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._size = size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def store(self, answers: Sequence[RunAnswer]) -> None:
        """Stores the answers of runs still running at their attempt, durably,
        in one round trip."""
        if not answers:
            return
        args = [(a.run_id, a.attempt, a.answered_at, *answer_values(a.answer)) for a in answers]
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
                        self._dsn, min_size=1, max_size=self._size, reset=_keep
                    )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def tokens_values(tokens: TokenLogprobs | None) -> tuple[Any, ...]:
    """The TOKEN_COLUMNS of an answer's logprobs, as PostgreSQL can store them."""
    if tokens is None:
        return _NO_TOKENS
    return (
        storable_texts(tokens.tokens),
        tokens.logprobs,
        tokens.top_counts,
        storable_texts(tokens.top_tokens),
        tokens.top_logprobs,
    )


def answer_values(a: Answer | None) -> tuple[Any, ...]:
    """The ANSWER_COLUMNS of an answer (of none: a run that ended without one),
    as PostgreSQL can store them."""
    if a is None:
        return _NO_ANSWER
    return (
        storable_text(a.text),
        storable_text(a.finish_reason),
        a.tokens is not None,
        *tokens_values(a.tokens),
        a.input_tokens,
        a.output_tokens,
        a.cost_usd,
        a.latency_ms,
    )


def answer_columns(a: Answer | None) -> dict[str, Any]:
    """`answer_values` by column name."""
    return dict(zip(ANSWER_COLUMNS, answer_values(a), strict=True))
