"""PostgreSQL storage: tables, repositories and the unit of work. Schema changes
only through Alembic migrations (`nex-collector migrate`)."""
