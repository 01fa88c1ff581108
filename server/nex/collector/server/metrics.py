"""Prometheus metrics: the one home of every series the collector exports.

`serve`, `worker` and `dev` serve them over HTTP on METRICS_ADDR (off when
unset). Each process exports its own: scrape the server for RPCs and the
backlog, the workers for teacher calls, runs, dataset builds and evidence
deliveries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

RPCS = Counter(
    "nex_collector_rpcs",
    "gRPC calls answered, by full method name and status code.",
    ["method", "code"],
)
RPC_SECONDS = Histogram(
    "nex_collector_rpc_duration_seconds",
    "Time to answer a unary gRPC call (streams are not timed), by method.",
    ["method"],
    buckets=_SECONDS,
)
TEACHER_CALLS = Counter(
    "nex_collector_teacher_calls",
    "Calls to a teacher API, by provider and outcome (ok, or the error code).",
    ["provider", "outcome"],
)
TEACHER_SECONDS = Histogram(
    "nex_collector_teacher_call_duration_seconds",
    "Latency of teacher calls, successful or not, by provider.",
    ["provider"],
    buckets=_SECONDS,
)
TEACHER_TOKENS = Counter(
    "nex_collector_teacher_tokens",
    "Tokens of completed teacher calls, by provider and kind (input, output).",
    ["provider", "kind"],
)
TEACHER_COST = Counter(
    "nex_collector_teacher_cost_usd",
    "Estimated cost of completed teacher calls in USD (the price table), by provider.",
    ["provider"],
)
ANSWER_COMMIT_SECONDS = Histogram(
    "nex_collector_answer_commit_seconds",
    "Time from a teacher's answer arriving to its being committed to PostgreSQL "
    "(a worker killed in between loses an answer already paid for).",
    buckets=(
        0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
        0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0,
    ),
)  # fmt: skip
LIMITER_WAITS = Counter(
    "nex_collector_limiter_waits",
    "Times a teacher call had to wait for the shared rate limit, by teacher and reason "
    "(requests, tokens, in_flight, blocked: after a 429).",
    ["teacher", "reason"],
)
LIMITER_WAIT_SECONDS = Histogram(
    "nex_collector_limiter_wait_seconds",
    "Time a call waited in this worker for the shared rate limit before it started.",
    ["teacher"],
    buckets=_SECONDS,
)
RUNS_THROTTLED = Counter(
    "nex_collector_runs_throttled",
    "Runs handed back to the queue to wait for teacher capacity (attempts not used).",
    ["teacher"],
)
TEACHER_RATE_LIMITED = Counter(
    "nex_collector_teacher_rate_limited",
    "429 answers (rate limited) from a teacher, by teacher.",
    ["teacher"],
)
TEACHER_TOKENS_PER_MIN = Gauge(
    "nex_collector_teacher_tokens_per_minute",
    "Tokens a teacher served over the last minute, over every worker (from the limiter).",
    ["teacher"],
)
TEACHER_CALLS_PER_MIN = Gauge(
    "nex_collector_teacher_calls_per_minute",
    "Calls a teacher served over the last minute, over every worker (from the limiter).",
    ["teacher"],
)
RUNS_FINISHED = Counter(
    "nex_collector_runs_finished",
    "Runs this worker brought to a final state, by status (completed, failed).",
    ["status"],
)
RUNS_RECOVERED = Counter(
    "nex_collector_runs_recovered",
    "Runs the reconciler took back, by reason (lease_expired: their worker died, "
    "queued again; answer_stored: their worker died after storing the answer, "
    "completed; job_lost: Redis lost their job).",
    ["reason"],
)
DATASET_BUILDS = Counter(
    "nex_collector_dataset_builds",
    "Dataset builds this worker finished, by status (ready, failed).",
    ["status"],
)
DATASET_RUNS_READ = Counter(
    "nex_collector_dataset_runs_read",
    "Completed runs read by dataset builds (kept or dropped by the filters).",
)
TASK_CRASHES = Counter(
    "nex_collector_background_task_crashes",
    "Crashes of a background task (each logged with its traceback), by task.",
    ["task"],
)
EVIDENCE_DELIVERIES = Counter(
    "nex_collector_evidence_deliveries",
    "Attempts to deliver an evidence link to NEX, by outcome (posted, retry).",
    ["outcome"],
)


# The backlog: read from PostgreSQL by each server every RECONCILE_INTERVAL_S, so
# every replica reports the same numbers (take max() across them).
RUNS_ACTIVE = Gauge(
    "nex_collector_runs_active",
    "Runs waiting for a worker (queued) or at a teacher (running), over all batches.",
    ["status"],
)
DATASETS_BUILDING = Gauge(
    "nex_collector_datasets_building",
    "Datasets whose build has not finished yet.",
)
EVIDENCE_PENDING = Gauge(
    "nex_collector_evidence_pending",
    "Evidence links not yet accepted by NEX (a growing number: NEX is down or refusing).",
)

BUDGET_LEFT = Gauge(
    "nex_collector_budget_left_usd",
    "USD a capped batch with runs queued or running may still spend "
    "(max_cost_usd - spent - reserved).",
    ["batch_id"],
)
BATCHES_PAUSED = Counter(
    "nex_collector_batches_paused",
    "Batches paused, by reason (BUDGET_EXHAUSTED: the next run did not fit under the cap).",
    ["reason"],
)


def serve(addr: str | None) -> Callable[[], None]:
    """Serves /metrics on `addr` (host:port; nothing if unset) in a background
    thread; returns the function that stops it. OSError if it cannot listen."""
    if not addr:
        return lambda: None
    host, _, port = addr.rpartition(":")
    server, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")
    log.info("metrics on http://%s/metrics", addr)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
