"""Domain objects <-> protobuf messages; the only module that knows both."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from nex.collector.server.domain import filters
from nex.collector.server.domain.batches import (
    BatchStatus,
    BatchView,
    ExecutionMode,
    ProviderJobView,
)
from nex.collector.server.domain.budgets import BatchPause, CostEstimate
from nex.collector.server.domain.context_refs import ContextRef
from nex.collector.server.domain.datasets import Dataset, DatasetStatus
from nex.collector.server.domain.errors import InvalidArgument
from nex.collector.server.domain.evidence import EvidenceLink, EvidenceStatus
from nex.collector.server.domain.runs import Run, RunError, RunEvent, RunStatus, Usage
from nex.collector.server.domain.teacher import GenerationParams, TokenLogprobs
from nex.collector.server.domain.teachers import TeacherKind
from nex.collector.server.domain.templates import PromptTemplate
from nex.collector.server.services.teachers import TeacherView
from nex.collector.v1 import (
    common_pb2,
    context_ref_pb2,
    dataset_pb2,
    evidence_pb2,
    teacher_endpoint_pb2,
    teacher_pb2,
    teacher_service_pb2,
    template_pb2,
)


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def context_ref(ref: ContextRef) -> context_ref_pb2.ContextRef:
    return context_ref_pb2.ContextRef(
        id=ref.id,
        nex_context_id=ref.nex_context_id,
        nex_context_version=ref.nex_context_version,
        labels=ref.labels,
        create_time=timestamp(ref.create_time),
    )


def template(t: PromptTemplate) -> template_pb2.PromptTemplate:
    return template_pb2.PromptTemplate(
        id=t.id,
        name=t.name,
        version=t.version,
        system_template=t.system_template,
        user_template=t.user_template,
        variables=list(t.variables),
        context_ref_id=t.context_ref_id or "",
        create_time=timestamp(t.create_time),
    )


# -- teacher ---------------------------------------------------------------------

_RUN_STATUS = {
    RunStatus.QUEUED: teacher_pb2.RUN_STATUS_QUEUED,
    RunStatus.RUNNING: teacher_pb2.RUN_STATUS_RUNNING,
    RunStatus.COMPLETED: teacher_pb2.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: teacher_pb2.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: teacher_pb2.RUN_STATUS_CANCELLED,
}
_RUN_STATUS_FROM_PB = {v: k for k, v in _RUN_STATUS.items()}
_BATCH_STATUS = {
    BatchStatus.OPEN: teacher_pb2.BATCH_STATUS_OPEN,
    BatchStatus.RUNNING: teacher_pb2.BATCH_STATUS_RUNNING,
    BatchStatus.COMPLETED: teacher_pb2.BATCH_STATUS_COMPLETED,
    BatchStatus.CANCELLED: teacher_pb2.BATCH_STATUS_CANCELLED,
    BatchStatus.PAUSED: teacher_pb2.BATCH_STATUS_PAUSED,
}


def run_status_from_pb(
    value: teacher_pb2.RunStatus.ValueType, field: str = "status"
) -> RunStatus | None:
    """None for UNSPECIFIED; an unknown number is INVALID_ARGUMENT."""
    if value == teacher_pb2.RUN_STATUS_UNSPECIFIED:
        return None
    if value not in _RUN_STATUS_FROM_PB:
        raise InvalidArgument.one(field, f"unknown run status {value}")
    return _RUN_STATUS_FROM_PB[value]


def params_from_pb(p: teacher_pb2.GenerationParams) -> GenerationParams:
    return GenerationParams(
        temperature=p.temperature if p.HasField("temperature") else None,
        max_tokens=p.max_tokens if p.HasField("max_tokens") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        top_logprobs=p.top_logprobs if p.HasField("top_logprobs") else None,
        seed=p.seed if p.HasField("seed") else None,
        stop=tuple(p.stop),
    )


def params(p: GenerationParams) -> teacher_pb2.GenerationParams:
    return teacher_pb2.GenerationParams(
        temperature=p.temperature,
        max_tokens=p.max_tokens,
        top_p=p.top_p,
        top_logprobs=p.top_logprobs,
        seed=p.seed,
        stop=list(p.stop),
    )


def usage(u: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(
        input_tokens=u.input_tokens, output_tokens=u.output_tokens, cost_usd=u.cost_usd
    )


def error(e: RunError | None) -> common_pb2.Error | None:
    return common_pb2.Error(code=e.code, message=e.message) if e else None


def batch(view: BatchView) -> teacher_pb2.TeacherBatch:
    b, c = view.batch, view.counts
    return teacher_pb2.TeacherBatch(
        id=b.id,
        name=b.name,
        template_id=b.template_id,
        provider=b.provider,
        model=b.model,
        params=params(b.params),
        context_ref_id=b.context_ref_id or "",
        labels=b.labels,
        status=_BATCH_STATUS[view.status],
        counts=teacher_pb2.RunCounts(
            queued=c.queued,
            running=c.running,
            completed=c.completed,
            failed=c.failed,
            cancelled=c.cancelled,
            total=c.total,
        ),
        usage=usage(view.usage),
        create_time=timestamp(b.create_time),
        link_evidence=b.link_evidence,
        cancel_time=timestamp(b.cancel_time),
        max_cost_usd=b.max_cost_usd,
        budget=teacher_pb2.BatchBudget(
            spent_usd=view.budget.spent_usd,
            reserved_usd=view.budget.reserved_usd,
            queued_worst_case_usd=view.queued_worst_case_usd,
            remaining_usd=view.budget.remaining_usd,
        ),
        execution_mode=_EXECUTION_MODES[b.execution_mode],
        deadline_time=timestamp(b.deadline_time),
        provider_jobs=[provider_job(j) for j in view.provider_jobs],
        provider_batch_saved_usd=view.provider_batch_saved_usd,
        pause=batch_pause(b.pause),
    )


_EXECUTION_MODES = {
    ExecutionMode.ONLINE: teacher_pb2.EXECUTION_MODE_ONLINE,
    ExecutionMode.PROVIDER_BATCH: teacher_pb2.EXECUTION_MODE_PROVIDER_BATCH,
    ExecutionMode.AUTO: teacher_pb2.EXECUTION_MODE_AUTO,
}


def execution_mode_from_pb(value: int) -> ExecutionMode:
    """Unset is ONLINE; a value this server does not know is INVALID_ARGUMENT."""
    if value == teacher_pb2.EXECUTION_MODE_UNSPECIFIED:
        return ExecutionMode.ONLINE
    for mode, pb_value in _EXECUTION_MODES.items():
        if pb_value == value:
            return mode
    raise InvalidArgument.one(
        "execution_mode", f"unknown execution mode {value}; allowed: ONLINE, PROVIDER_BATCH, AUTO"
    )


def provider_job(j: ProviderJobView) -> teacher_pb2.ProviderJob:
    return teacher_pb2.ProviderJob(
        id=j.id,
        teacher=j.teacher,
        provider_job_id=j.provider_job_id,
        input_file_id=j.input_file_id,
        state=j.state,
        request_total=j.request_total,
        request_completed=j.request_completed,
        request_failed=j.request_failed,
        submit_time=timestamp(j.submit_time),
        finish_time=timestamp(j.finish_time),
        error=common_pb2.Error(code=j.error.code, message=j.error.message) if j.error else None,
    )


def batch_pause(p: BatchPause | None) -> teacher_pb2.BatchPause | None:
    if p is None:
        return None
    return teacher_pb2.BatchPause(
        reason=p.reason,
        message=p.message,
        metadata={"scope": p.scope} if p.scope else {},
        time=timestamp(p.time),
    )


def cost_estimate(e: CostEstimate) -> teacher_service_pb2.CostEstimate:
    return teacher_service_pb2.CostEstimate(
        runs=e.runs,
        prompt_tokens_bound=e.prompt_tokens_bound,
        output_tokens_bound=e.output_tokens_bound,
        worst_case_cost_usd=e.worst_case_cost_usd,
        priced=e.priced,
    )


def _tokens(t: TokenLogprobs) -> list[teacher_pb2.TokenLogprob]:
    out = []
    for token, logprob, alts in zip(t.tokens, t.logprobs, t.alternatives(), strict=True):
        out.append(
            teacher_pb2.TokenLogprob(
                token=token,
                logprob=logprob,
                top_logprobs=[teacher_pb2.TopLogprob(token=a, logprob=lp) for a, lp in alts],
            )
        )
    return out


def run(r: Run) -> teacher_pb2.TeacherRun:
    return teacher_pb2.TeacherRun(
        id=r.id,
        batch_id=r.batch_id,
        status=_RUN_STATUS[r.status],
        variables=r.variables,
        messages=[teacher_pb2.Message(role=m.role, content=m.content) for m in r.messages],
        output_text=r.output_text,
        finish_reason=r.finish_reason,
        tokens=_tokens(r.tokens) if r.tokens is not None else [],
        usage=usage(r.usage),
        scores=r.scores,
        attempt=r.attempt,
        error=error(r.error),
        latency_ms=r.latency_ms,
        create_time=timestamp(r.create_time),
        start_time=timestamp(r.start_time),
        end_time=timestamp(r.end_time),
        has_logprobs=r.has_logprobs,
        request_id=r.request_id,
    )


def run_created(r: Run) -> teacher_pb2.TeacherRun:
    """A run as BatchCreateRuns answers it: without variables or the rendered
    prompt, so the reply stays small however many runs the call made."""
    return teacher_pb2.TeacherRun(
        id=r.id,
        batch_id=r.batch_id,
        status=_RUN_STATUS[r.status],
        attempt=r.attempt,
        create_time=timestamp(r.create_time),
        request_id=r.request_id,
    )


def run_event(e: RunEvent) -> teacher_pb2.RunEvent:
    return teacher_pb2.RunEvent(
        revision=e.revision,
        run_id=e.run_id,
        batch_id=e.batch_id,
        status=_RUN_STATUS[e.status],
        attempt=e.attempt,
        error=error(e.error),
        time=timestamp(e.time),
    )


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Field 1, length-delimited: both WatchRunsResponse.event and RunEventBatch.events.
_EVENT_TAG = b"\x0a"
_EVENTS_TAG = b"\x1a"  # WatchRunsResponse.events (field 3, length-delimited)


def run_event_field(e: RunEvent) -> bytes:
    """The event encoded as field 1 holding a RunEvent: on its own, a whole
    WatchRunsResponse (`event`); concatenated, the body of a RunEventBatch."""
    body = run_event(e).SerializeToString()
    return _EVENT_TAG + _varint(len(body)) + body


def events_response(fields: list[bytes]) -> bytes:
    """A WatchRunsResponse (`events`) encoded from `run_event_field` pieces."""
    body = b"".join(fields)
    return _EVENTS_TAG + _varint(len(body)) + body


# -- datasets --------------------------------------------------------------------

_DATASET_STATUS = {
    DatasetStatus.BUILDING: dataset_pb2.DATASET_STATUS_BUILDING,
    DatasetStatus.READY: dataset_pb2.DATASET_STATUS_READY,
    DatasetStatus.FAILED: dataset_pb2.DATASET_STATUS_FAILED,
}


def _opt(message: Message, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None


def filter_from_pb(f: dataset_pb2.Filter, field: str) -> filters.Filter:
    kind = f.WhichOneof("kind")
    if kind == "length":
        return filters.LengthFilter(_opt(f.length, "min_chars"), _opt(f.length, "max_chars"))
    if kind == "regex":
        return filters.RegexFilter(f.regex.pattern, f.regex.must_match)
    if kind == "entropy":
        return filters.EntropyFilter(_opt(f.entropy, "min"), _opt(f.entropy, "max"))
    if kind == "boolean":
        return filters.BooleanFilter(f.boolean.name, f.boolean.value)
    if kind == "score":
        return filters.ScoreFilter(f.score.name, _opt(f.score, "min"), _opt(f.score, "max"))
    raise InvalidArgument.one(field, "set one of length, regex, entropy, boolean, score")


def filter_(f: filters.Filter) -> dataset_pb2.Filter:
    if isinstance(f, filters.LengthFilter):
        return dataset_pb2.Filter(
            length=dataset_pb2.LengthFilter(min_chars=f.min_chars, max_chars=f.max_chars)
        )
    if isinstance(f, filters.RegexFilter):
        return dataset_pb2.Filter(
            regex=dataset_pb2.RegexFilter(pattern=f.pattern, must_match=f.must_match)
        )
    if isinstance(f, filters.EntropyFilter):
        return dataset_pb2.Filter(entropy=dataset_pb2.EntropyFilter(min=f.min, max=f.max))
    if isinstance(f, filters.BooleanFilter):
        return dataset_pb2.Filter(boolean=dataset_pb2.BooleanFilter(name=f.name, value=f.value))
    return dataset_pb2.Filter(score=dataset_pb2.ScoreFilter(name=f.name, min=f.min, max=f.max))


def dataset(d: Dataset) -> dataset_pb2.DatasetManifest:
    return dataset_pb2.DatasetManifest(
        id=d.id,
        name=d.name,
        version=d.version,
        status=_DATASET_STATUS[d.status],
        uri=d.uri,
        files=[
            dataset_pb2.DatasetFile(name=f.name, sha256=f.sha256, rows=f.rows, bytes=f.bytes)
            for f in d.files
        ],
        counts=dataset_pb2.DatasetCounts(
            total=d.counts.total,
            kept=d.counts.kept,
            dropped=[
                dataset_pb2.FilterDrop(index=x.index, filter=x.filter, dropped=x.dropped)
                for x in d.counts.dropped
            ],
        ),
        batch_ids=list(d.batch_ids),
        filters=[filter_(f) for f in d.filters],
        create_time=timestamp(d.create_time),
        error=error(d.error),
        ready_time=timestamp(d.ready_time),
        context_ref_id=d.context_ref_id or "",
        link_evidence=d.link_evidence,
        parts=d.parts,
    )


# -- evidence --------------------------------------------------------------------

_EVIDENCE_STATUS = {
    EvidenceStatus.PENDING: evidence_pb2.EVIDENCE_STATUS_PENDING,
    EvidenceStatus.POSTED: evidence_pb2.EVIDENCE_STATUS_POSTED,
}


def evidence_link(link: EvidenceLink) -> evidence_pb2.EvidenceLink:
    return evidence_pb2.EvidenceLink(
        id=link.id,
        context_ref_id=link.context_ref_id,
        dataset_id=link.dataset_id or "",
        run_id=link.run_id or "",
        kind=link.kind,
        note=link.note,
        status=_EVIDENCE_STATUS[link.status],
        attempts=link.attempts,
        last_error=link.last_error or "",
        create_time=timestamp(link.create_time),
        post_time=timestamp(link.post_time),
    )


_TEACHER_KINDS = {
    TeacherKind.OPENAI: teacher_endpoint_pb2.TEACHER_KIND_OPENAI,
    TeacherKind.ANTHROPIC: teacher_endpoint_pb2.TEACHER_KIND_ANTHROPIC,
    TeacherKind.OPENAI_COMPATIBLE: teacher_endpoint_pb2.TEACHER_KIND_OPENAI_COMPATIBLE,
    TeacherKind.MOCK: teacher_endpoint_pb2.TEACHER_KIND_MOCK,
}


def teacher_endpoint(view: TeacherView) -> teacher_endpoint_pb2.TeacherEndpoint:
    """A teacher as ListTeachers shows it: never its key, only the key's variable name."""
    t, u = view.teacher, view.usage
    return teacher_endpoint_pb2.TeacherEndpoint(
        name=t.name,
        kind=_TEACHER_KINDS[t.kind],
        base_url=t.base_url or "",
        api_key_env=t.api_key_env or "",
        limits=teacher_endpoint_pb2.TeacherLimits(
            requests_per_min=t.limits.requests_per_min,
            tokens_per_min=t.limits.tokens_per_min,
            max_in_flight=t.limits.max_in_flight,
        ),
        capabilities=teacher_endpoint_pb2.TeacherCapabilities(
            logprobs=t.capabilities.logprobs, max_top_logprobs=t.capabilities.max_top_logprobs
        ),
        prices=[
            teacher_endpoint_pb2.TeacherModelPrice(
                model=model, input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok
            )
            for model, p in sorted(view.prices.items())
        ],
        usage=teacher_endpoint_pb2.TeacherUsage(
            calls_per_min=u.calls_per_min,
            tokens_per_min=u.tokens_per_min,
            rate_limited_per_min=u.rate_limited_per_min,
            in_flight=u.in_flight,
            waiting_runs=u.waiting,
        ),
        problem=t.problem or "",
        daily_max_cost_usd=t.daily_max_cost_usd,
        batch=teacher_endpoint_pb2.TeacherBatchSupport(
            supported=t.batch.supported,
            max_requests=t.batch.max_requests,
            max_bytes=t.batch.max_bytes,
            price_factor=t.batch.price_factor,
        ),
    )
