"""Typed values returned and accepted by the client.

Plain frozen dataclasses and enums mirroring ``nex.collector.v1``; the
generated protobuf classes never leave ``_convert``. Enum values equal the
proto values. Unset optional fields are ``None``; repeated fields are tuples
and maps are read-only ``Mapping`` views of plain dicts.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeAlias

# --------------------------------------------------------------------- enums


class RunStatus(enum.IntEnum):
    """Status of one teacher run."""

    UNSPECIFIED = 0
    QUEUED = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELLED: the run will not change again."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class BatchStatus(enum.IntEnum):
    """Status of a teacher batch."""

    UNSPECIFIED = 0
    OPEN = 1
    RUNNING = 2
    COMPLETED = 3
    CANCELLED = 4
    PAUSED = 5


class ExecutionMode(enum.IntEnum):
    """How a batch's runs reach the teacher: one call each (ONLINE, the
    default), through the provider's Batch API at its batch price
    (PROVIDER_BATCH), or the Batch API with an online fallback before the
    batch's deadline (AUTO)."""

    UNSPECIFIED = 0
    ONLINE = 1
    PROVIDER_BATCH = 2
    AUTO = 3


class DatasetStatus(enum.IntEnum):
    """Status of a dataset build."""

    UNSPECIFIED = 0
    BUILDING = 1
    READY = 2
    FAILED = 3

    @property
    def is_terminal(self) -> bool:
        """True for READY and FAILED."""
        return self in (DatasetStatus.READY, DatasetStatus.FAILED)


class EvidenceStatus(enum.IntEnum):
    """Delivery status of an evidence link."""

    UNSPECIFIED = 0
    PENDING = 1
    POSTED = 2


class RunView(enum.IntEnum):
    """How much of a run ``get_run`` / ``list_runs`` return."""

    UNSPECIFIED = 0
    BASIC = 1
    """Everything but the per-token logprobs."""
    FULL = 2
    """Everything."""


class Provider(enum.StrEnum):
    """Teacher providers known to the service (any ``str`` is accepted too)."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    MOCK = "mock"


class TeacherKind(enum.IntEnum):
    """What a teacher endpoint speaks."""

    UNSPECIFIED = 0
    OPENAI = 1
    ANTHROPIC = 2
    OPENAI_COMPATIBLE = 3
    MOCK = 4


# -------------------------------------------------------------------- teachers


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherLimits:
    """Configured limits of a teacher; None: learned from the provider."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherCapabilities:
    logprobs: bool = True
    max_top_logprobs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherModelPrice:
    """USD per 1M input / output tokens of one model."""

    model: str
    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherUsage:
    """A teacher's load over the last minute, over every worker."""

    calls_per_min: int = 0
    tokens_per_min: int = 0
    rate_limited_per_min: int = 0
    in_flight: int = 0
    waiting_runs: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherBatchSupport:
    """Whether batches may use the teacher's Batch API, its limits per job,
    and its price as a fraction of the online price."""

    supported: bool = False
    max_requests: int = 0
    max_bytes: int = 0
    price_factor: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherEndpoint:
    """A named teacher a batch's ``provider`` may name. Never holds a key:
    ``api_key_env`` is the name of the server's variable that does."""

    name: str
    kind: TeacherKind
    base_url: str | None = None
    api_key_env: str | None = None
    limits: TeacherLimits = TeacherLimits()
    capabilities: TeacherCapabilities = TeacherCapabilities()
    prices: tuple[TeacherModelPrice, ...] = ()
    usage: TeacherUsage = TeacherUsage()
    problem: str | None = None
    daily_max_cost_usd: float | None = None
    batch: TeacherBatchSupport = TeacherBatchSupport()


# ---------------------------------------------------------------- context refs


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextRef:
    """A reference to one version of a NEX context."""

    id: str
    nex_context_id: str
    nex_context_version: str
    labels: Mapping[str, str] = field(default_factory=dict)
    create_time: datetime | None = None


# ----------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptTemplate:
    """An immutable, versioned prompt template (Jinja2 syntax)."""

    id: str
    name: str
    version: int
    system_template: str
    user_template: str
    variables: tuple[str, ...] = ()
    context_ref_id: str | None = None
    create_time: datetime | None = None


# ------------------------------------------------------------------- teacher


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """How the teacher generates; ``None`` leaves the provider's default."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    """Alternatives recorded per output token (0 to 20)."""
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCounts:
    """Runs of a batch per status."""

    queued: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0

    @property
    def done(self) -> int:
        """Runs that have ended (completed, failed or cancelled)."""
        return self.completed + self.failed + self.cancelled

    @property
    def active(self) -> int:
        """Runs still queued or running."""
        return self.queued + self.running


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchBudget:
    """What a batch's teacher calls cost and may still cost, in USD."""

    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    queued_worst_case_usd: float = 0.0
    remaining_usd: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchPause:
    """Why a batch is paused, e.g. ``reason="BUDGET_EXHAUSTED"``."""

    reason: str
    message: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CostEstimate:
    """The most a set of runs may cost, known before any call."""

    runs: int = 0
    prompt_tokens_bound: int = 0
    output_tokens_bound: int = 0
    worst_case_cost_usd: float = 0.0
    priced: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Token usage and cost of a run, or the sum over a batch."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class RunError:
    """Why a run or a dataset build failed: a stable UPPER_SNAKE ``code`` and a message."""

    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherBatch:
    """A batch of teacher runs sharing a template, provider, model and params."""

    id: str
    name: str
    template_id: str
    provider: str
    model: str
    params: GenerationParams = GenerationParams()
    context_ref_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    status: BatchStatus = BatchStatus.UNSPECIFIED
    counts: RunCounts = RunCounts()
    usage: Usage = Usage()
    create_time: datetime | None = None
    link_evidence: bool = False
    cancel_time: datetime | None = None
    max_cost_usd: float | None = None
    budget: BatchBudget = BatchBudget()
    pause: BatchPause | None = None
    execution_mode: ExecutionMode = ExecutionMode.UNSPECIFIED
    deadline_time: datetime | None = None
    provider_jobs: tuple[ProviderJob, ...] = ()
    # What the provider batch price saved against the online price, in USD.
    provider_batch_saved_usd: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderJob:
    """A job at a provider's Batch API carrying some runs of a batch."""

    id: str
    teacher: str
    provider_job_id: str | None
    input_file_id: str | None
    state: str
    request_total: int
    request_completed: int
    request_failed: int
    submit_time: datetime | None
    finish_time: datetime | None
    error: RunError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderJobProgress:
    """A provider batch job's latest state and request counts, as a batch watch
    reports it (``watch_batch(..., on_provider_job=...)``): a snapshot, sent at
    the watch's start (and again after a reconnect) and at each change, after
    every run event committed before it."""

    batch_id: str
    job: ProviderJob
    # When the job's state or counts last changed.
    update_time: datetime | None = None

    def describe(self) -> str:
        """``"in_progress 1200/5000"`` (with ``", 3 failed"`` when some failed)."""
        j = self.job
        done = j.request_completed + j.request_failed
        text = f"{j.state} {done}/{j.request_total}"
        return f"{text}, {j.request_failed} failed" if j.request_failed else text


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a rendered prompt."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One output token with its logprob and the top alternatives at its position."""

    token: str
    logprob: float
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TeacherRun:
    """One call of a teacher model."""

    id: str
    batch_id: str
    status: RunStatus
    variables: Mapping[str, str] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()
    output_text: str = ""
    finish_reason: str = ""
    tokens: tuple[TokenLogprob, ...] = ()
    """Empty with ``RunView.BASIC`` and for providers without logprobs."""
    usage: Usage = Usage()
    scores: Mapping[str, float] = field(default_factory=dict)
    attempt: int = 0
    error: RunError | None = None
    latency_ms: int = 0
    create_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    has_logprobs: bool = False
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunInput:
    """One run to create with ``create_runs``."""

    variables: Mapping[str, str]
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """One status change of a run; ``revision`` strictly increases service-wide."""

    revision: int
    run_id: str
    batch_id: str
    status: RunStatus
    attempt: int = 0
    error: RunError | None = None
    time: datetime | None = None


# ------------------------------------------------------------------ datasets


@dataclass(frozen=True, slots=True)
class LengthFilter:
    """Keeps runs whose output length in characters is within [min_chars, max_chars]."""

    min_chars: int | None = None
    max_chars: int | None = None


@dataclass(frozen=True, slots=True)
class RegexFilter:
    """Keeps runs whose output matches the RE2 ``pattern`` (or does not, with
    ``must_match=False``). Note: ``must_match`` defaults to True here."""

    pattern: str
    must_match: bool = True


@dataclass(frozen=True, slots=True)
class EntropyFilter:
    """Keeps runs whose mean token entropy (nats) is within [min, max]."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class BooleanFilter:
    """Keeps runs whose boolean property ``name`` equals ``value`` (e.g.
    ``finish_reason_stop``, ``finish_reason_length``, ``has_logprobs``, ``has_output``)."""

    name: str
    value: bool = True


@dataclass(frozen=True, slots=True)
class ScoreFilter:
    """Keeps runs whose score ``name`` is within [min, max]."""

    name: str
    min: float | None = None
    max: float | None = None


Filter: TypeAlias = LengthFilter | RegexFilter | EntropyFilter | BooleanFilter | ScoreFilter
"""Any one dataset filter."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetFile:
    name: str
    sha256: str
    rows: int
    bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterDrop:
    """How many runs the filter at ``index`` dropped."""

    index: int
    filter: str
    dropped: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetCounts:
    total: int = 0
    kept: int = 0
    dropped: tuple[FilterDrop, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetManifest:
    """A distilled dataset; immutable once READY."""

    id: str
    name: str
    version: str
    status: DatasetStatus
    uri: str = ""
    files: tuple[DatasetFile, ...] = ()
    counts: DatasetCounts = DatasetCounts()
    batch_ids: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    create_time: datetime | None = None
    error: RunError | None = None
    ready_time: datetime | None = None
    context_ref_id: str | None = None
    link_evidence: bool = False
    parts: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetVerification:
    """What ``verify_dataset`` found: the server recomputed every file's sha256,
    size, rows and schema where the files are stored."""

    dataset: DatasetManifest
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------ evidence


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceLink:
    """A link from a dataset or a run back to a NEX context."""

    id: str
    context_ref_id: str
    dataset_id: str | None = None
    run_id: str | None = None
    kind: str = ""
    note: str = ""
    status: EvidenceStatus = EvidenceStatus.UNSPECIFIED
    attempts: int = 0
    last_error: str | None = None
    create_time: datetime | None = None
    post_time: datetime | None = None
