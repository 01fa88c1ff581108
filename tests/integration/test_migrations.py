"""The schema comes only from Alembic migrations, and they match the tables the
code queries."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from nex.collector.server.db.migrate import upgrade_to_head
from nex.collector.server.db.tables import metadata
from tests.support.backing import Backing


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


def test_migrations_match_the_tables_and_rerun_safely(backing: Backing) -> None:
    async def main() -> list[object]:
        engine = create_async_engine(backing.database_url)
        try:
            await upgrade_to_head(engine)
            await asyncio.gather(
                upgrade_to_head(engine), upgrade_to_head(engine)
            )  # concurrent: a no-op
            async with engine.connect() as connection:
                return await connection.run_sync(_diff)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == []
