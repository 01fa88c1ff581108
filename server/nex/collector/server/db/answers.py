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
from nex.collector.server.domain.teacher import TOKEN_SEPARATOR, TokenLogprobs
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
# Token texts can go joined by TOKEN_SEPARATOR, split by PostgreSQL: asyncpg
# encodes a text[] element by element in Python, about a third of this write's
# CPU at top-5 logprobs, where one string is one copy. Used for every answer
# whose texts split back exactly (see `_joined`), i.e. nearly all.
_JOINED = ("token_texts", "top_tokens")
_JOINED_AT = tuple(ANSWER_COLUMNS.index(name) + 3 for name in _JOINED)  # in a row below


def _store(joined: bool) -> str:
    """The UPDATE of one answer; row: run id, attempt, answer_time, ANSWER_COLUMNS."""
    sets = ", ".join(
        f"{name} = string_to_array(${i}::text, E'\\x1f')"
        if joined and name in _JOINED
        else f"{name} = ${i}"
        for i, name in enumerate(ANSWER_COLUMNS, start=4)
    )
    return (
        f"UPDATE {runs.name} SET answer_time = $3, {sets} "
        f"WHERE id = $1 AND status = '{RunStatus.RUNNING.value}' AND attempt = $2"
    )


_STORE, _STORE_JOINED = _store(joined=False), _store(joined=True)
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
        joined: list[tuple[Any, ...]] = []
        arrays: list[tuple[Any, ...]] = []
        for a in answers:
            row = (a.run_id, a.attempt, a.answered_at, *answer_values(a.answer))
            packed = _joined_row(row)
            if packed is None:
                arrays.append(row)
            else:
                joined.append(packed)
        pool = await self._open()
        for statement, args in ((_STORE_JOINED, joined), (_STORE, arrays)):
            if not args:
                continue
            try:
                await pool.executemany(statement, args)
            except _GONE:
                await pool.expire_connections()
                await pool.executemany(statement, args)

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


def _joined(texts: Sequence[str] | None) -> str | bool | None:
    """`texts` joined by TOKEN_SEPARATOR when string_to_array gives them back
    exactly (None stays None); False when it would not: a text holding the
    separator, or one lone empty text (PostgreSQL splits "" into no element)."""
    if texts is None:
        return None
    joined = TOKEN_SEPARATOR.join(texts)
    if joined == "":
        return joined if not texts else False
    return joined if joined.count(TOKEN_SEPARATOR) == len(texts) - 1 else False


def _joined_row(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """A `_STORE` row as `_STORE_JOINED` takes it, or None when it cannot be."""
    out = list(row)
    for i in _JOINED_AT:
        joined = _joined(row[i])
        if joined is False:
            return None
        out[i] = joined
    return tuple(out)


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
