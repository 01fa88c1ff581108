"""A database session of the test's own holding a lock, the way a psql session
would: what the collector does next waits for it until the block ends."""

from __future__ import annotations

import asyncio
import threading

import asyncpg

from nex.collector.server.bootstrap import plain_dsn


class SessionHolding:
    """Runs `take` in a session of its own when the block starts and `release`
    when it ends (or at `release_now()`), holding what `take` took in between."""

    def __init__(self, database_url: str, take: str, release: str) -> None:
        self._dsn = plain_dsn(database_url)
        self._take, self._release_sql = take, release
        self._taken = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._hold()), daemon=True)

    async def _hold(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            await conn.execute(self._take)
            self._taken.set()
            await asyncio.to_thread(self._release.wait)
            await conn.execute(self._release_sql)
        finally:
            await conn.close()

    def release_now(self) -> None:
        self._release.set()
        self._thread.join(10)

    def __enter__(self) -> SessionHolding:
        self._thread.start()
        assert self._taken.wait(10), "the lock was not taken within 10 s"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release_now()


def holding_events_lock(database_url: str, lock: int) -> SessionHolding:
    """The run-events advisory lock: every transaction appending events waits."""
    return SessionHolding(
        database_url, f"SELECT pg_advisory_lock({lock})", f"SELECT pg_advisory_unlock({lock})"
    )


def holding_table(database_url: str, table: str) -> SessionHolding:
    """An open transaction holding `table` exclusively: even reads of it wait."""
    return SessionHolding(
        database_url, f'BEGIN; LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE', "COMMIT"
    )
