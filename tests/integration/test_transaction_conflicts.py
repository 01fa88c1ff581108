"""Two transactions that deadlock: PostgreSQL rolls one back, and the unit of
work says so as a retryable UNAVAILABLE (TRANSACTION_CONFLICT), never as an
internal error."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.errors import Unavailable
from tests.support.backing import Backing


async def _deadlock(backing: Backing) -> list[BaseException | None]:
    engine = create_async_engine(backing.database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY)")
            )
            await conn.execute(
                text("INSERT INTO deadlock_probe VALUES (1), (2) ON CONFLICT DO NOTHING")
            )
        uow = UnitOfWorkFactory(async_sessionmaker(engine, expire_on_commit=False))
        both_hold_one = asyncio.Barrier(2)

        async def lock(first: int, second: int) -> None:
            async with uow() as tx:
                await tx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": first})
                await both_hold_one.wait()
                await tx.session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": second})
                await tx.commit()

        results = await asyncio.gather(
            lock(9_100_001, 9_100_002), lock(9_100_002, 9_100_001), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]
    finally:
        await engine.dispose()


def test_a_deadlock_victim_is_told_to_retry(backing: Backing) -> None:
    outcomes = asyncio.run(_deadlock(backing))
    errors = [e for e in outcomes if e is not None]
    assert len(errors) == 1, outcomes  # PostgreSQL broke the cycle by rolling back one
    assert isinstance(errors[0], Unavailable)
    assert errors[0].reason == "TRANSACTION_CONFLICT" and errors[0].retry_after_s
