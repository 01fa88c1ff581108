"""A provider job holds up to 50,000 (OpenAI) or 100,000 (Anthropic) runs, and
asyncpg refuses a statement of more than 32,767 parameters: every statement
over a job's runs must take them whatever their number (bench/provider_batch.py
runs 100,000 runs end to end)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from nex.collector.server.db.migrate import upgrade_to_head
from nex.collector.server.db.repositories.budgets import Hold
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.budgets import Budget
from tests.support.backing import Backing

JOB = 100_000  # Anthropic's limit per job, the largest


def test_statements_over_a_jobs_runs_take_any_number_of_them(own_backing: Backing) -> None:
    async def main() -> None:
        engine = create_async_engine(own_backing.database_url)
        try:
            await upgrade_to_head(engine)
            uow = UnitOfWorkFactory(async_sessionmaker(engine, expire_on_commit=False))
            ids = [f"run{i:06d}" for i in range(JOB)]
            keys = [(r, 1) for r in ids]
            at = datetime.now(UTC)
            async with uow() as tx:
                await tx.budgets.set_cap("batch:big", 10.0)
                for r in ids[:3]:
                    hold = [Hold("batch:big", 1.0)]
                    assert await tx.budgets.reserve(r, 1, hold, batch_id="bat_big") is None
                await tx.commit()
            async with uow() as tx:
                await tx.provider_jobs.assign(ids, "pjb_big", at)
                assert await tx.provider_jobs.lock_running(keys) == []
                await tx.provider_jobs.requeue(ids, via_provider=True)
                await tx.provider_jobs.fail(ids, "X", "x", at, cancelled=False)
                await tx.budgets.release(keys)  # a job that failed whole frees it all
                await tx.commit()
            async with uow() as tx:
                assert await tx.budgets.get("batch:big") == Budget(10.0, 0.0, 0.0)
        finally:
            await engine.dispose()

    asyncio.run(main())
