"""provider jobs: when their progress last changed (shown by WatchRuns) and
how many of their steps have failed in a row (a job the provider keeps
refusing is given up)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("provider_jobs", sa.Column("update_time", sa.DateTime(timezone=True)))
    op.add_column(
        "provider_jobs",
        sa.Column("step_failures", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("provider_jobs", "step_failures")
    op.drop_column("provider_jobs", "update_time")
