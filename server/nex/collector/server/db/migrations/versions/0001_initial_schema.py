"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 12:09:39.582853
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "context_refs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("nex_context_id", sa.Text(), nullable=False),
        sa.Column("nex_context_version", sa.Text(), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("nex_context_id", "nex_context_version", name="uq_context_refs_nex"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "run_events",
        sa.Column("revision", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "time", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("revision"),
    )
    op.create_index(
        "ix_run_events_batch_revision", "run_events", ["batch_id", "revision"], unique=False
    )
    op.create_index(
        "ix_run_events_run_revision", "run_events", ["run_id", "revision"], unique=False
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("batch_ids", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("filters", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "files", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        sa.Column(
            "counts", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("context_ref_id", sa.Text(), nullable=True),
        sa.Column("link_evidence", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("ready_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_linked", sa.Boolean(), server_default="false", nullable=False),
        sa.ForeignKeyConstraint(
            ["context_ref_id"],
            ["context_refs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_datasets_name_version"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("system_template", sa.Text(), nullable=False),
        sa.Column("user_template", sa.Text(), nullable=False),
        sa.Column("variables", sa.ARRAY(sa.Text()), nullable=False),
        sa.Column("context_ref_id", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["context_ref_id"],
            ["context_refs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", name="uq_templates_name_version"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("template_id", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("context_ref_id", sa.Text(), nullable=True),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("link_evidence", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("cancel_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_linked", sa.Boolean(), server_default="false", nullable=False),
        sa.ForeignKeyConstraint(
            ["context_ref_id"],
            ["context_refs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["template_id"],
            ["templates.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("variables", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("messages", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("output_text", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.Text(), nullable=True),
        sa.Column("has_logprobs", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("token_texts", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("token_logprobs", sa.ARRAY(sa.Double()), nullable=True),
        sa.Column("top_counts", sa.ARRAY(sa.Integer()), nullable=True),
        sa.Column("top_tokens", sa.ARRAY(sa.Text()), nullable=True),
        sa.Column("top_logprobs", sa.ARRAY(sa.Double()), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Double(), server_default="0", nullable=False),
        sa.Column("latency_ms", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "scores", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False
        ),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_datasets_status", "datasets", ["status"], unique=False)
    op.create_index("ix_runs_batch_status", "runs", ["batch_id", "status"], unique=False)
    op.create_index("ix_runs_status_lease", "runs", ["status", "lease_expires"], unique=False)
    op.create_table(
        "evidence_links",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("context_ref_id", sa.Text(), nullable=False),
        sa.Column("dataset_id", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "create_time",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("post_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["context_ref_id"],
            ["context_refs.id"],
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index(
        "ix_evidence_links_status_next",
        "evidence_links",
        ["status", "next_attempt_time"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_evidence_links_status_next", table_name="evidence_links")
    op.drop_table("evidence_links")
    op.drop_index("ix_runs_status_lease", table_name="runs")
    op.drop_index("ix_runs_batch_status", table_name="runs")
    op.drop_table("runs")
    op.drop_table("batches")
    op.drop_table("templates")
    op.drop_index("ix_datasets_status", table_name="datasets")
    op.drop_table("datasets")
    op.drop_index("ix_run_events_run_revision", table_name="run_events")
    op.drop_index("ix_run_events_batch_revision", table_name="run_events")
    op.drop_table("run_events")
    op.drop_table("context_refs")
