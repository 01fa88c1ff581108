"""The schema, as SQLAlchemy Core tables. Alembic migrations create it; this module
only describes it for queries."""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()


def _created() -> Column[object]:
    return Column("create_time", DateTime(timezone=True), nullable=False, server_default=func.now())


context_refs = Table(
    "context_refs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("nex_context_id", Text, nullable=False),
    Column("nex_context_version", Text, nullable=False),
    Column("labels", JSONB, nullable=False),
    Column("request_id", Text, unique=True),
    _created(),
    # When NEX confirmed the context version (integrated mode); null for a ref
    # made in standalone mode, which integrated mode confirms before any use.
    Column("confirm_time", DateTime(timezone=True)),
    UniqueConstraint("nex_context_id", "nex_context_version", name="uq_context_refs_nex"),
)

templates = Table(
    "templates",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("system_template", Text, nullable=False),
    Column("user_template", Text, nullable=False),
    Column("variables", ARRAY(Text), nullable=False),
    Column("context_ref_id", Text, ForeignKey("context_refs.id")),
    Column("request_id", Text, unique=True),
    _created(),
    UniqueConstraint("name", "version", name="uq_templates_name_version"),
)

batches = Table(
    "batches",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("template_id", Text, ForeignKey("templates.id"), nullable=False),
    Column("provider", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("params", JSONB, nullable=False),
    Column("context_ref_id", Text, ForeignKey("context_refs.id")),
    Column("labels", JSONB, nullable=False),
    Column("link_evidence", Boolean, nullable=False, server_default="false"),
    Column("request_id", Text, unique=True),
    _created(),
    Column("cancel_time", DateTime(timezone=True)),
    Column("evidence_linked", Boolean, nullable=False, server_default="false"),
    # Why no run of the batch may start (e.g. BUDGET_EXHAUSTED); NULL: not paused.
    Column("pause_reason", Text),
    Column("pause_message", Text),
    Column("pause_time", DateTime(timezone=True)),
    # The budget scope that could not take the next run (see `budgets`).
    Column("pause_scope", Text),
    # domain.batches.ExecutionMode; when every run should have ended.
    Column("execution_mode", Text, nullable=False, server_default="online"),
    Column("deadline_time", DateTime(timezone=True)),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("batch_id", Text, ForeignKey("batches.id"), nullable=False),
    Column("status", Text, nullable=False),
    Column("variables", JSONB, nullable=False),
    Column("messages", JSONB, nullable=False),
    Column("request_id", Text, unique=True),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("output_text", Text),
    Column("finish_reason", Text),
    Column("has_logprobs", Boolean, nullable=False, server_default="false"),
    # Per-token logprobs, columnar (see domain.teacher.TokenLogprobs): arrays read
    # about twice as fast as JSON.
    Column("token_texts", ARRAY(Text)),
    Column("token_logprobs", ARRAY(Double)),
    Column("top_counts", ARRAY(Integer)),
    Column("top_tokens", ARRAY(Text)),
    Column("top_logprobs", ARRAY(Double)),
    Column("input_tokens", BigInteger, nullable=False, server_default="0"),
    Column("output_tokens", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Double, nullable=False, server_default="0"),
    Column("latency_ms", BigInteger, nullable=False, server_default="0"),
    Column("scores", JSONB, nullable=False, server_default="{}"),
    _created(),
    Column("start_time", DateTime(timezone=True)),
    Column("end_time", DateTime(timezone=True)),
    Column("lease_expires", DateTime(timezone=True)),
    # The worker process running it (see `workers`); calls that ended with a
    # teacher error, and workers that died holding it, counted apart.
    Column("worker_id", Text),
    Column("teacher_failures", Integer, nullable=False, server_default="0"),
    Column("lost_count", Integer, nullable=False, server_default="0"),
    # When the teacher's answer was stored: it is kept even if the worker dies
    # before the run is marked completed.
    Column("answer_time", DateTime(timezone=True)),
    # domain.estimates.prompt_token_bound of `messages`, for reservations and estimates.
    Column("prompt_tokens_bound", BigInteger, nullable=False, server_default="0"),
    # Goes through a provider batch job (never taken by the online path), and
    # the job that carries its current attempt.
    Column("via_provider", Boolean, nullable=False, server_default="false"),
    Column("provider_job_id", Text),
    Index("ix_runs_batch_status", "batch_id", "status"),
    Index(
        "ix_runs_provider_queue",
        "batch_id",
        postgresql_where=text("via_provider AND status = 'queued'"),
    ),
    Index("ix_runs_provider_job", "provider_job_id"),
    Index("ix_runs_status_lease", "status", "lease_expires"),
)

# Worker processes that are alive: each renews its row (a heartbeat) well before
# `expires_at`; runs and jobs of a worker whose row expired are taken back.
workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("start_time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

run_events = Table(
    "run_events",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", Text, nullable=False),
    Column("batch_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("time", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_run_events_batch_revision", "batch_id", "revision"),
    Index("ix_run_events_run_revision", "run_id", "revision"),
)

datasets = Table(
    "datasets",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("uri", Text, nullable=False),
    Column("batch_ids", ARRAY(Text), nullable=False),
    Column("filters", JSONB, nullable=False),
    Column("files", JSONB, nullable=False, server_default="[]"),
    Column("counts", JSONB, nullable=False, server_default="{}"),
    Column("error_code", Text),
    Column("error_message", Text),
    Column("context_ref_id", Text, ForeignKey("context_refs.id")),
    Column("link_evidence", Boolean, nullable=False, server_default="false"),
    Column("request_id", Text, unique=True),
    _created(),
    Column("ready_time", DateTime(timezone=True)),
    Column("lease_expires", DateTime(timezone=True)),
    Column("evidence_linked", Boolean, nullable=False, server_default="false"),
    Column("allow_empty", Boolean, nullable=False, server_default="false"),
    Column("parts", Integer, nullable=False, server_default="1"),
    # One live (building or ready) dataset per version; a failed build leaves it free.
    Index(
        "uq_datasets_name_version_live",
        "name",
        "version",
        unique=True,
        postgresql_where=text("status <> 'failed'"),
    ),
    Index("ix_datasets_status", "status"),
)

# The parts of a dataset built in parts (datasets.parts > 1): each part's run
# range (by run id, planned once), who builds it (lease) and what it wrote.
dataset_parts = Table(
    "dataset_parts",
    metadata,
    Column("dataset_id", Text, ForeignKey("datasets.id"), primary_key=True),
    Column("part", Integer, primary_key=True),
    Column("first_run_id", Text),  # inclusive; NULL: from the first run
    Column("end_run_id", Text),  # exclusive; NULL: to the last run
    Column("status", Text, nullable=False),
    Column("lease_expires", DateTime(timezone=True)),
    Column("worker_id", Text),
    Column("files", JSONB, nullable=False, server_default="[]"),
    Column("counts", JSONB, nullable=False, server_default="{}"),
)

evidence_links = Table(
    "evidence_links",
    metadata,
    Column("id", Text, primary_key=True),
    Column("context_ref_id", Text, ForeignKey("context_refs.id"), nullable=False),
    Column("dataset_id", Text, ForeignKey("datasets.id")),
    Column("run_id", Text, ForeignKey("runs.id")),
    Column("kind", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("request_id", Text, unique=True),
    _created(),
    Column("post_time", DateTime(timezone=True)),
    Column("next_attempt_time", DateTime(timezone=True)),
    Index("ix_evidence_links_status_next", "status", "next_attempt_time"),
)

# Money per scope: "batch:<id>" (its cap is the batch's max_cost_usd) or
# "teacher:<name>:<UTC day>" (a daily cap from the teachers file). A call
# reserves its worst case in every scope it counts against, with a guarded
# UPDATE; the run's result settles it to the real cost.
budgets = Table(
    "budgets",
    metadata,
    Column("scope", Text, primary_key=True),
    Column("max_cost_usd", Double),
    Column("spent_usd", Double, nullable=False, server_default="0"),
    Column("reserved_usd", Double, nullable=False, server_default="0"),
)

# What one run attempt holds in one scope until it is settled (result stored),
# released (the call failed) or charged (its worker was lost: the provider may
# have billed it, so the worst case counts as spent).
budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("run_id", Text, primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("scope", Text, primary_key=True),
    Column("amount_usd", Double, nullable=False),
    _created(),
)

# Jobs at a provider's Batch API (see services/provider_jobs.py). `id` is ours,
# chosen before anything is sent, and is the job's marker at the provider.
provider_jobs = Table(
    "provider_jobs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("batch_id", Text, ForeignKey("batches.id"), nullable=False),
    Column("teacher", Text, nullable=False),
    Column("provider_job_id", Text),
    Column("input_file_id", Text),
    Column("output_file_id", Text),
    Column("error_file_id", Text),
    Column("state", Text, nullable=False),
    Column("request_total", BigInteger, nullable=False, server_default="0"),
    Column("request_completed", BigInteger, nullable=False, server_default="0"),
    Column("request_failed", BigInteger, nullable=False, server_default="0"),
    Column("input_bytes", BigInteger, nullable=False, server_default="0"),
    Column("polls", Integer, nullable=False, server_default="0"),
    Column("worker_id", Text),
    Column("next_poll_time", DateTime(timezone=True)),
    Column("cancel_requested", Boolean, nullable=False, server_default="false"),
    Column("cost_usd", Double, nullable=False, server_default="0"),
    Column("online_cost_usd", Double, nullable=False, server_default="0"),
    Column("error_code", Text),
    Column("error_message", Text),
    _created(),
    Column("submit_time", DateTime(timezone=True)),
    Column("finish_time", DateTime(timezone=True)),
    # When its state or counts last changed.
    Column("update_time", DateTime(timezone=True)),
    # Steps failed in a row (reset by one that works).
    Column("step_failures", Integer, nullable=False, server_default="0"),
    Index("ix_provider_jobs_state", "state", "next_poll_time"),
    Index("ix_provider_jobs_batch", "batch_id"),
)
