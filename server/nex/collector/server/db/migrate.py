"""Runs Alembic migrations programmatically (`nex-collector migrate`, `dev`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from nex.collector.server.db.locks import MIGRATIONS_LOCK

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def _upgrade(connection: Connection, database_url: str) -> None:
    config = alembic_config(database_url)
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade_to_head(engine: AsyncEngine) -> None:
    """Brings the schema to the newest migration; safe to run concurrently
    (an advisory lock serialises migrators)."""
    async with engine.connect() as connection:
        await connection.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATIONS_LOCK})")
        try:
            await connection.run_sync(_upgrade, engine.url.render_as_string(hide_password=False))
            await connection.commit()
        finally:
            await connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATIONS_LOCK})")
            await connection.commit()


def head_revision() -> str:
    """The newest migration this build ships."""
    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None, "no migrations shipped"
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The migration the database is at (None: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
