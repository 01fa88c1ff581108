"""worker liveness: workers say they are alive; runs know their owner, their lost
workers and their teacher failures, and when their answer was stored

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column(
            "start_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.add_column("runs", sa.Column("worker_id", sa.Text(), nullable=True))
    op.add_column(
        "runs", sa.Column("teacher_failures", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("runs", sa.Column("lost_count", sa.Integer(), server_default="0", nullable=False))
    op.add_column("runs", sa.Column("answer_time", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "answer_time")
    op.drop_column("runs", "lost_count")
    op.drop_column("runs", "teacher_failures")
    op.drop_column("runs", "worker_id")
    op.drop_table("workers")
