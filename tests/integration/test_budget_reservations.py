"""Budget reservations against a real PostgreSQL: concurrent reservations never
pass a cap, and every way a reservation ends (settled, released, charged) keeps
the books straight."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from nex.collector.server.db.migrate import upgrade_to_head
from nex.collector.server.db.repositories.budgets import Hold, Settlement
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.budgets import Budget
from tests.support.backing import Backing


async def _reserve(uow: UnitOfWorkFactory, run_id: str, holds: list[Hold]) -> bool:
    async with uow() as tx:
        refused = await tx.budgets.reserve(run_id, 1, holds, batch_id="bat_x")
        if refused is None:
            await tx.commit()
        return refused is None


async def _budget(uow: UnitOfWorkFactory, scope: str) -> Budget | None:
    async with uow() as tx:
        return await tx.budgets.get(scope)


def test_concurrent_reservations_never_pass_the_cap(own_backing: Backing) -> None:
    async def main() -> None:
        engine = create_async_engine(own_backing.database_url, pool_size=30)
        try:
            await upgrade_to_head(engine)
            uow = UnitOfWorkFactory(async_sessionmaker(engine, expire_on_commit=False))
            async with uow() as tx:
                await tx.budgets.set_cap("batch:x", 3.0)
                await tx.commit()
            # 60 calls of $0.25 worst case race for a $3 cap: exactly 12 fit.
            won = await asyncio.gather(
                *(_reserve(uow, f"run{i}", [Hold("batch:x", 0.25)]) for i in range(60))
            )
            winners = [f"run{i}" for i, ok in enumerate(won) if ok]
            assert len(winners) == 12
            assert await _budget(uow, "batch:x") == Budget(3.0, 0.0, 3.0)

            async with uow() as tx:  # four calls return, costing less than reserved
                await tx.budgets.settle([Settlement(r, 1, "batch:x", 0.125) for r in winners[:4]])
                await tx.budgets.release([(winners[4], 1)])  # one call failed: not billed
                await tx.budgets.charge([(winners[5], 1)])  # one worker was lost mid-call
                await tx.commit()
            assert await _budget(uow, "batch:x") == Budget(3.0, 0.5 + 0.25, 3.0 - 1.5)
            # Freed money takes new calls; the books never go past the cap.
            assert await _reserve(uow, "late1", [Hold("batch:x", 0.75)])
            assert not await _reserve(uow, "late2", [Hold("batch:x", 0.25)])

            # A teacher's daily cap comes from outside (the teachers file): the
            # call must fit under both scopes, or it reserves nothing anywhere.
            async with uow() as tx:
                await tx.budgets.set_cap("batch:y", None)
                await tx.commit()
            day = "teacher:openai:2026-12-01"
            both = [Hold("batch:y", 0.5), Hold(day, 0.5, cap=1.0)]
            assert await _reserve(uow, "d1", both)
            assert await _reserve(uow, "d2", both)
            assert not await _reserve(uow, "d3", both)
            assert await _budget(uow, day) == Budget(1.0, 0.0, 1.0)
            assert await _budget(uow, "batch:y") == Budget(None, 0.0, 1.0)
        finally:
            await engine.dispose()

    asyncio.run(main())
