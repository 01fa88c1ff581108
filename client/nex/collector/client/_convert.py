"""Protobuf <-> dataclass conversion: the only module that touches message fields."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import timestamp_pb2

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

from ._types import (
    BatchBudget,
    BatchPause,
    BatchStatus,
    BooleanFilter,
    ContextRef,
    CostEstimate,
    DatasetCounts,
    DatasetFile,
    DatasetManifest,
    DatasetStatus,
    EntropyFilter,
    EvidenceLink,
    EvidenceStatus,
    ExecutionMode,
    Filter,
    FilterDrop,
    GenerationParams,
    LengthFilter,
    Message,
    PromptTemplate,
    ProviderJob,
    ProviderJobProgress,
    RegexFilter,
    RunCounts,
    RunError,
    RunEvent,
    RunInput,
    RunStatus,
    ScoreFilter,
    TeacherBatch,
    TeacherBatchSupport,
    TeacherCapabilities,
    TeacherEndpoint,
    TeacherKind,
    TeacherLimits,
    TeacherModelPrice,
    TeacherRun,
    TeacherUsage,
    TokenLogprob,
    TopLogprob,
    Usage,
)

_E = TypeVar("_E", bound=enum.IntEnum)


# ------------------------------------------------------------------ helpers


def _time(msg: timestamp_pb2.Timestamp, is_set: bool) -> datetime | None:
    """An aware UTC datetime, or None when the field is unset."""
    if not is_set:
        return None
    return msg.ToDatetime(tzinfo=UTC)


def _opt(value: str) -> str | None:
    """Proto3 strings have no presence: the empty string means unset."""
    return value or None


def _enum(cls: type[_E], value: int) -> _E:
    """Maps a proto enum value to its mirror; a value this client does not know
    (a newer server) becomes UNSPECIFIED rather than an error."""
    try:
        return cls(value)
    except ValueError:
        return cls(0)


def _error(msg: common_pb2.Error, is_set: bool) -> RunError | None:
    if not is_set or not (msg.code or msg.message):
        return None
    return RunError(code=msg.code, message=msg.message)


def _usage(msg: common_pb2.Usage) -> Usage:
    return Usage(
        input_tokens=msg.input_tokens, output_tokens=msg.output_tokens, cost_usd=msg.cost_usd
    )


# ------------------------------------------------------------- context refs


def context_ref(msg: context_ref_pb2.ContextRef) -> ContextRef:
    return ContextRef(
        id=msg.id,
        nex_context_id=msg.nex_context_id,
        nex_context_version=msg.nex_context_version,
        labels=dict(msg.labels),
        create_time=_time(msg.create_time, msg.HasField("create_time")),
    )


# ---------------------------------------------------------------- templates


def template(msg: template_pb2.PromptTemplate) -> PromptTemplate:
    return PromptTemplate(
        id=msg.id,
        name=msg.name,
        version=msg.version,
        system_template=msg.system_template,
        user_template=msg.user_template,
        variables=tuple(msg.variables),
        context_ref_id=_opt(msg.context_ref_id),
        create_time=_time(msg.create_time, msg.HasField("create_time")),
    )


# ------------------------------------------------------------------ teacher


def params_from_proto(msg: teacher_pb2.GenerationParams) -> GenerationParams:
    return GenerationParams(
        temperature=msg.temperature if msg.HasField("temperature") else None,
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else None,
        top_p=msg.top_p if msg.HasField("top_p") else None,
        top_logprobs=msg.top_logprobs if msg.HasField("top_logprobs") else None,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=tuple(msg.stop),
    )


def params_to_proto(params: GenerationParams) -> teacher_pb2.GenerationParams:
    # Passing None to a proto3 `optional` field leaves it unset.
    return teacher_pb2.GenerationParams(
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        top_p=params.top_p,
        top_logprobs=params.top_logprobs,
        seed=params.seed,
        stop=list(params.stop),
    )


def run_counts(msg: teacher_pb2.RunCounts) -> RunCounts:
    return RunCounts(
        queued=msg.queued,
        running=msg.running,
        completed=msg.completed,
        failed=msg.failed,
        cancelled=msg.cancelled,
        total=msg.total,
    )


def batch(msg: teacher_pb2.TeacherBatch) -> TeacherBatch:
    return TeacherBatch(
        id=msg.id,
        name=msg.name,
        template_id=msg.template_id,
        provider=msg.provider,
        model=msg.model,
        params=params_from_proto(msg.params),
        context_ref_id=_opt(msg.context_ref_id),
        labels=dict(msg.labels),
        status=_enum(BatchStatus, msg.status),
        counts=run_counts(msg.counts),
        usage=_usage(msg.usage),
        create_time=_time(msg.create_time, msg.HasField("create_time")),
        link_evidence=msg.link_evidence,
        cancel_time=_time(msg.cancel_time, msg.HasField("cancel_time")),
        max_cost_usd=msg.max_cost_usd if msg.HasField("max_cost_usd") else None,
        budget=BatchBudget(
            spent_usd=msg.budget.spent_usd,
            reserved_usd=msg.budget.reserved_usd,
            queued_worst_case_usd=msg.budget.queued_worst_case_usd,
            remaining_usd=msg.budget.remaining_usd
            if msg.budget.HasField("remaining_usd")
            else None,
        ),
        pause=BatchPause(
            reason=msg.pause.reason,
            message=msg.pause.message,
            metadata=dict(msg.pause.metadata),
            time=_time(msg.pause.time, msg.pause.HasField("time")),
        )
        if msg.HasField("pause")
        else None,
        execution_mode=_enum(ExecutionMode, msg.execution_mode),
        deadline_time=_time(msg.deadline_time, msg.HasField("deadline_time")),
        provider_jobs=tuple(provider_job(j) for j in msg.provider_jobs),
        provider_batch_saved_usd=msg.provider_batch_saved_usd,
    )


def provider_job(msg: teacher_pb2.ProviderJob) -> ProviderJob:
    return ProviderJob(
        id=msg.id,
        teacher=msg.teacher,
        provider_job_id=_opt(msg.provider_job_id),
        input_file_id=_opt(msg.input_file_id),
        state=msg.state,
        request_total=msg.request_total,
        request_completed=msg.request_completed,
        request_failed=msg.request_failed,
        submit_time=_time(msg.submit_time, msg.HasField("submit_time")),
        finish_time=_time(msg.finish_time, msg.HasField("finish_time")),
        error=RunError(code=msg.error.code, message=msg.error.message)
        if msg.HasField("error") and msg.error.code
        else None,
    )


def provider_job_progress(msg: teacher_service_pb2.ProviderJobProgress) -> ProviderJobProgress:
    return ProviderJobProgress(
        batch_id=msg.batch_id,
        job=provider_job(msg.job),
        update_time=_time(msg.update_time, msg.HasField("update_time")),
    )


def cost_estimate(msg: teacher_service_pb2.CostEstimate) -> CostEstimate:
    return CostEstimate(
        runs=msg.runs,
        prompt_tokens_bound=msg.prompt_tokens_bound,
        output_tokens_bound=msg.output_tokens_bound,
        worst_case_cost_usd=msg.worst_case_cost_usd,
        priced=msg.priced,
    )


def _token(msg: teacher_pb2.TokenLogprob) -> TokenLogprob:
    return TokenLogprob(
        token=msg.token,
        logprob=msg.logprob,
        top_logprobs=tuple(TopLogprob(token=t.token, logprob=t.logprob) for t in msg.top_logprobs),
    )


def run(msg: teacher_pb2.TeacherRun) -> TeacherRun:
    return TeacherRun(
        id=msg.id,
        batch_id=msg.batch_id,
        status=_enum(RunStatus, msg.status),
        variables=dict(msg.variables),
        messages=tuple(Message(role=m.role, content=m.content) for m in msg.messages),
        output_text=msg.output_text,
        finish_reason=msg.finish_reason,
        tokens=tuple(_token(t) for t in msg.tokens),
        usage=_usage(msg.usage),
        scores=dict(msg.scores),
        attempt=msg.attempt,
        error=_error(msg.error, msg.HasField("error")),
        latency_ms=msg.latency_ms,
        create_time=_time(msg.create_time, msg.HasField("create_time")),
        start_time=_time(msg.start_time, msg.HasField("start_time")),
        end_time=_time(msg.end_time, msg.HasField("end_time")),
        has_logprobs=msg.has_logprobs,
        request_id=_opt(msg.request_id),
    )


def run_event(msg: teacher_pb2.RunEvent) -> RunEvent:
    return RunEvent(
        revision=msg.revision,
        run_id=msg.run_id,
        batch_id=msg.batch_id,
        status=_enum(RunStatus, msg.status),
        attempt=msg.attempt,
        error=_error(msg.error, msg.HasField("error")),
        time=_time(msg.time, msg.HasField("time")),
    )


def run_input(value: Mapping[str, str] | RunInput) -> teacher_service_pb2.RunInput:
    if isinstance(value, RunInput):
        return teacher_service_pb2.RunInput(
            variables=dict(value.variables), request_id=value.request_id or ""
        )
    return teacher_service_pb2.RunInput(variables=dict(value))


# ----------------------------------------------------------------- datasets


def filter_to_proto(f: Filter) -> dataset_pb2.Filter:
    match f:
        case LengthFilter():
            return dataset_pb2.Filter(
                length=dataset_pb2.LengthFilter(min_chars=f.min_chars, max_chars=f.max_chars)
            )
        case RegexFilter():
            return dataset_pb2.Filter(
                regex=dataset_pb2.RegexFilter(pattern=f.pattern, must_match=f.must_match)
            )
        case EntropyFilter():
            return dataset_pb2.Filter(entropy=dataset_pb2.EntropyFilter(min=f.min, max=f.max))
        case BooleanFilter():
            return dataset_pb2.Filter(boolean=dataset_pb2.BooleanFilter(name=f.name, value=f.value))
        case ScoreFilter():
            return dataset_pb2.Filter(
                score=dataset_pb2.ScoreFilter(name=f.name, min=f.min, max=f.max)
            )
    raise TypeError(f"not a dataset filter: {f!r}")


def filter_from_proto(msg: dataset_pb2.Filter) -> Filter | None:
    """None for a filter kind this client does not know."""
    kind = msg.WhichOneof("kind")
    if kind == "length":
        lf = msg.length
        return LengthFilter(
            min_chars=lf.min_chars if lf.HasField("min_chars") else None,
            max_chars=lf.max_chars if lf.HasField("max_chars") else None,
        )
    if kind == "regex":
        return RegexFilter(pattern=msg.regex.pattern, must_match=msg.regex.must_match)
    if kind == "entropy":
        ef = msg.entropy
        return EntropyFilter(
            min=ef.min if ef.HasField("min") else None,
            max=ef.max if ef.HasField("max") else None,
        )
    if kind == "boolean":
        return BooleanFilter(name=msg.boolean.name, value=msg.boolean.value)
    if kind == "score":
        sf = msg.score
        return ScoreFilter(
            name=sf.name,
            min=sf.min if sf.HasField("min") else None,
            max=sf.max if sf.HasField("max") else None,
        )
    return None


def dataset(msg: dataset_pb2.DatasetManifest) -> DatasetManifest:
    filters = tuple(f for f in (filter_from_proto(p) for p in msg.filters) if f is not None)
    return DatasetManifest(
        id=msg.id,
        name=msg.name,
        version=msg.version,
        status=_enum(DatasetStatus, msg.status),
        uri=msg.uri,
        files=tuple(
            DatasetFile(name=f.name, sha256=f.sha256, rows=f.rows, bytes=f.bytes) for f in msg.files
        ),
        counts=DatasetCounts(
            total=msg.counts.total,
            kept=msg.counts.kept,
            dropped=tuple(
                FilterDrop(index=d.index, filter=d.filter, dropped=d.dropped)
                for d in msg.counts.dropped
            ),
        ),
        batch_ids=tuple(msg.batch_ids),
        filters=filters,
        create_time=_time(msg.create_time, msg.HasField("create_time")),
        error=_error(msg.error, msg.HasField("error")),
        ready_time=_time(msg.ready_time, msg.HasField("ready_time")),
        context_ref_id=_opt(msg.context_ref_id),
        link_evidence=msg.link_evidence,
        parts=msg.parts or 1,
    )


# ----------------------------------------------------------------- evidence


def evidence_link(msg: evidence_pb2.EvidenceLink) -> EvidenceLink:
    return EvidenceLink(
        id=msg.id,
        context_ref_id=msg.context_ref_id,
        dataset_id=_opt(msg.dataset_id),
        run_id=_opt(msg.run_id),
        kind=msg.kind,
        note=msg.note,
        status=_enum(EvidenceStatus, msg.status),
        attempts=msg.attempts,
        last_error=_opt(msg.last_error),
        create_time=_time(msg.create_time, msg.HasField("create_time")),
        post_time=_time(msg.post_time, msg.HasField("post_time")),
    )


def teacher_endpoint(msg: teacher_endpoint_pb2.TeacherEndpoint) -> TeacherEndpoint:
    lim, caps, use = msg.limits, msg.capabilities, msg.usage
    return TeacherEndpoint(
        name=msg.name,
        kind=_enum(TeacherKind, msg.kind),
        base_url=_opt(msg.base_url),
        api_key_env=_opt(msg.api_key_env),
        limits=TeacherLimits(
            requests_per_min=lim.requests_per_min if lim.HasField("requests_per_min") else None,
            tokens_per_min=lim.tokens_per_min if lim.HasField("tokens_per_min") else None,
            max_in_flight=lim.max_in_flight if lim.HasField("max_in_flight") else None,
        ),
        capabilities=TeacherCapabilities(
            logprobs=caps.logprobs, max_top_logprobs=caps.max_top_logprobs
        ),
        prices=tuple(
            TeacherModelPrice(
                model=p.model, input_per_mtok=p.input_per_mtok, output_per_mtok=p.output_per_mtok
            )
            for p in msg.prices
        ),
        usage=TeacherUsage(
            calls_per_min=use.calls_per_min,
            tokens_per_min=use.tokens_per_min,
            rate_limited_per_min=use.rate_limited_per_min,
            in_flight=use.in_flight,
            waiting_runs=use.waiting_runs,
        ),
        problem=_opt(msg.problem),
        daily_max_cost_usd=msg.daily_max_cost_usd if msg.HasField("daily_max_cost_usd") else None,
        batch=TeacherBatchSupport(
            supported=msg.batch.supported,
            max_requests=msg.batch.max_requests,
            max_bytes=msg.batch.max_bytes,
            price_factor=msg.batch.price_factor,
        ),
    )
