"""datasets built in parts: a dataset's number of parts, and each part's run
range, lease and files

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("parts", sa.Integer(), server_default="1", nullable=False))
    op.create_table(
        "dataset_parts",
        sa.Column("dataset_id", sa.Text(), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("first_run_id", sa.Text()),
        sa.Column("end_run_id", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("lease_expires", sa.DateTime(timezone=True)),
        sa.Column("worker_id", sa.Text()),
        sa.Column("files", postgresql.JSONB(), server_default="[]", nullable=False),
        sa.Column("counts", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "part"),
    )


def downgrade() -> None:
    op.drop_table("dataset_parts")
    op.drop_column("datasets", "parts")
