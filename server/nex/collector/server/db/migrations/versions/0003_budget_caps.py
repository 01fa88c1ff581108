"""budget caps: budgets per scope, reservations per run attempt, batch pause,
each run's prompt-token bound

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("max_cost_usd", sa.Double(), nullable=True),
        sa.Column("spent_usd", sa.Double(), server_default="0", nullable=False),
        sa.Column("reserved_usd", sa.Double(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("scope"),
    )
    op.create_table(
        "budget_reservations",
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("amount_usd", sa.Double(), nullable=False),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("run_id", "attempt", "scope"),
    )
    op.add_column("batches", sa.Column("pause_reason", sa.Text(), nullable=True))
    op.add_column("batches", sa.Column("pause_message", sa.Text(), nullable=True))
    op.add_column("batches", sa.Column("pause_time", sa.DateTime(timezone=True), nullable=True))
    op.add_column("batches", sa.Column("pause_scope", sa.Text(), nullable=True))
    op.add_column(
        "runs",
        sa.Column("prompt_tokens_bound", sa.BigInteger(), server_default="0", nullable=False),
    )
    # The bound of domain.estimates.prompt_token_bound, for runs already stored.
    op.execute(
        """
        UPDATE runs SET prompt_tokens_bound = 8 + COALESCE((
            SELECT SUM(octet_length(m->>'role') + octet_length(m->>'content') + 8)
            FROM jsonb_array_elements(runs.messages) AS m), 0)
        """
    )
    op.execute(
        """
        INSERT INTO budgets (scope, spent_usd)
        SELECT 'batch:' || b.id, COALESCE(SUM(r.cost_usd), 0)
        FROM batches b LEFT JOIN runs r ON r.batch_id = b.id
        GROUP BY b.id
        """
    )


def downgrade() -> None:
    op.drop_column("runs", "prompt_tokens_bound")
    op.drop_column("batches", "pause_scope")
    op.drop_column("batches", "pause_time")
    op.drop_column("batches", "pause_message")
    op.drop_column("batches", "pause_reason")
    op.drop_table("budget_reservations")
    op.drop_table("budgets")
