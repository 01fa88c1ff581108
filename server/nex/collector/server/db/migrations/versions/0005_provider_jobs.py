"""provider batch jobs: a batch's execution mode and deadline, the provider
jobs (OpenAI Batch, Anthropic Message Batches) carrying its runs, and each
run's link to its job

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "batches",
        sa.Column("execution_mode", sa.Text(), server_default="online", nullable=False),
    )
    op.add_column("batches", sa.Column("deadline_time", sa.DateTime(timezone=True)))
    op.create_table(
        "provider_jobs",
        # Our own id, chosen before anything is sent: the job's marker at the
        # provider (the input file's name, the batch's metadata), so that a job
        # recorded but never confirmed is found there instead of sent twice.
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), sa.ForeignKey("batches.id"), nullable=False),
        sa.Column("teacher", sa.Text(), nullable=False),
        sa.Column("provider_job_id", sa.Text()),
        sa.Column("input_file_id", sa.Text()),
        sa.Column("output_file_id", sa.Text()),
        sa.Column("error_file_id", sa.Text()),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("request_total", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("request_completed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("request_failed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("input_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("polls", sa.Integer(), server_default="0", nullable=False),
        # The worker taking the job's current step (see `workers`): nobody else
        # takes it while that worker is alive.
        sa.Column("worker_id", sa.Text()),
        sa.Column("next_poll_time", sa.DateTime(timezone=True)),
        sa.Column("cancel_requested", sa.Boolean(), server_default="false", nullable=False),
        # What the ingested results cost at the batch price, and would have online.
        sa.Column("cost_usd", sa.Double(), server_default="0", nullable=False),
        sa.Column("online_cost_usd", sa.Double(), server_default="0", nullable=False),
        sa.Column("error_code", sa.Text()),
        sa.Column("error_message", sa.Text()),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("submit_time", sa.DateTime(timezone=True)),
        sa.Column("finish_time", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_provider_jobs_state", "provider_jobs", ["state", "next_poll_time"])
    op.create_index("ix_provider_jobs_batch", "provider_jobs", ["batch_id"])
    # A run waiting for (or in) a provider job is never taken by the online path.
    op.add_column(
        "runs", sa.Column("via_provider", sa.Boolean(), server_default="false", nullable=False)
    )
    op.add_column("runs", sa.Column("provider_job_id", sa.Text()))
    op.create_index(
        "ix_runs_provider_queue",
        "runs",
        ["batch_id"],
        postgresql_where=sa.text("via_provider AND status = 'queued'"),
    )
    op.create_index("ix_runs_provider_job", "runs", ["provider_job_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_provider_job", table_name="runs")
    op.drop_index("ix_runs_provider_queue", table_name="runs")
    op.drop_column("runs", "provider_job_id")
    op.drop_column("runs", "via_provider")
    op.drop_index("ix_provider_jobs_batch", table_name="provider_jobs")
    op.drop_index("ix_provider_jobs_state", table_name="provider_jobs")
    op.drop_table("provider_jobs")
    op.drop_column("batches", "deadline_time")
    op.drop_column("batches", "execution_mode")
