"""The shipped client's public surface, conversions and error mapping (no server)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

import nex.collector.client as client_pkg
from nex.collector.client import (
    AlreadyExistsError,
    BatchStatus,
    BooleanFilter,
    CollectorError,
    DatasetBuildError,
    DatasetManifest,
    DatasetStatus,
    EntropyFilter,
    EvidenceStatus,
    FieldViolation,
    Filter,
    GenerationParams,
    InternalError,
    InvalidArgumentError,
    LengthFilter,
    NotFoundError,
    RegexFilter,
    RpcCancelledError,
    RunError,
    RunInput,
    RunStatus,
    ScoreFilter,
    UnauthenticatedError,
    UnavailableError,
    WatchRetry,
    _convert,
    _errors,
    _watch,
)
from nex.collector.v1 import (
    common_pb2,
    context_ref_pb2,
    dataset_pb2,
    evidence_pb2,
    teacher_pb2,
    template_pb2,
)

# ---------------------------------------------------------------- __all__


def _public_names() -> set[str]:
    loaded = {
        name
        for name, value in vars(client_pkg).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    return loaded | set(client_pkg._LAZY)  # the grpc-backed names load on first use


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(client_pkg.__all__) == sorted(_public_names())
    assert len(set(client_pkg.__all__)) == len(client_pkg.__all__)


def test_all_is_sorted() -> None:
    assert client_pkg.__all__ == sorted(client_pkg.__all__)


@pytest.mark.parametrize("name", client_pkg.__all__)
def test_each_name_is_importable(name: str) -> None:
    module = importlib.import_module("nex.collector.client")
    assert getattr(module, name) is not None


def test_private_modules_only() -> None:
    """Everything public goes through __init__; submodules stay private (but the
    optional progress module, which pulls in rich)."""
    names = [m.name for m in pkgutil.iter_modules(client_pkg.__path__)]
    assert names
    assert all(n.startswith("_") or n == "progress" for n in names), names


def test_public_objects_live_in_the_package() -> None:
    for name in client_pkg.__all__:
        obj = getattr(client_pkg, name)
        module = getattr(obj, "__module__", None)
        if module is not None and isinstance(obj, type):
            assert module.startswith("nex.collector.client"), (name, module)


# ------------------------------------------------------------- conversion


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=500_000_000)


def test_context_ref_conversion() -> None:
    ref = _convert.context_ref(
        context_ref_pb2.ContextRef(
            id="cr_1",
            nex_context_id="ctx",
            nex_context_version="v1",
            labels={"team": "ml"},
            create_time=_ts(1_700_000_000),
        )
    )
    assert ref.id == "cr_1" and ref.labels == {"team": "ml"}
    assert ref.create_time == datetime(2023, 11, 14, 22, 13, 20, 500_000, tzinfo=UTC)
    assert ref.create_time.tzinfo is not None


def test_unset_timestamp_and_optional_strings_are_none() -> None:
    tpl = _convert.template(
        template_pb2.PromptTemplate(id="t", name="n", version=2, user_template="{{ x }}")
    )
    assert tpl.create_time is None
    assert tpl.context_ref_id is None
    assert tpl.variables == ()
    assert tpl.version == 2


def test_generation_params_round_trip_keeps_unset_fields_unset() -> None:
    params = GenerationParams(temperature=0.0, max_tokens=16, stop=("\n",))
    msg = _convert.params_to_proto(params)
    assert msg.HasField("temperature") and msg.temperature == 0.0
    assert not msg.HasField("top_p") and not msg.HasField("seed")
    assert _convert.params_from_proto(msg) == params
    assert _convert.params_from_proto(teacher_pb2.GenerationParams()) == GenerationParams()


def test_batch_conversion() -> None:
    batch = _convert.batch(
        teacher_pb2.TeacherBatch(
            id="b",
            name="n",
            template_id="t",
            provider="mock",
            model="m",
            params=teacher_pb2.GenerationParams(seed=7),
            status=teacher_pb2.BATCH_STATUS_RUNNING,
            counts=teacher_pb2.RunCounts(queued=1, running=2, completed=3, failed=4, total=10),
            usage=common_pb2.Usage(input_tokens=5, output_tokens=6, cost_usd=0.25),
        )
    )
    assert batch.status is BatchStatus.RUNNING
    assert batch.params.seed == 7 and batch.params.temperature is None
    assert batch.counts.done == 7 and batch.counts.active == 3
    assert batch.usage.total_tokens == 11
    assert batch.cancel_time is None and batch.context_ref_id is None


def test_run_conversion_with_logprobs_and_error() -> None:
    run = _convert.run(
        teacher_pb2.TeacherRun(
            id="r",
            batch_id="b",
            status=teacher_pb2.RUN_STATUS_FAILED,
            variables={"topic": "x"},
            messages=[teacher_pb2.Message(role="user", content="hi")],
            tokens=[
                teacher_pb2.TokenLogprob(
                    token="a",
                    logprob=-0.5,
                    top_logprobs=[teacher_pb2.TopLogprob(token="b", logprob=-1.0)],
                )
            ],
            scores={"judge": 0.75},
            error=common_pb2.Error(code="PROVIDER_BAD_REQUEST", message="bad"),
            start_time=_ts(10),
        )
    )
    assert run.status is RunStatus.FAILED and run.status.is_terminal
    assert run.messages[0].content == "hi"
    assert run.tokens[0].top_logprobs[0].logprob == -1.0
    assert run.scores == {"judge": 0.75}
    assert run.error == RunError(code="PROVIDER_BAD_REQUEST", message="bad")
    assert run.start_time is not None and run.end_time is None
    assert run.request_id is None


def test_run_without_error_has_none() -> None:
    run = _convert.run(teacher_pb2.TeacherRun(id="r", status=teacher_pb2.RUN_STATUS_COMPLETED))
    assert run.error is None


def test_unknown_enum_value_becomes_unspecified() -> None:
    event = _convert.run_event(
        teacher_pb2.RunEvent(revision=3, status=teacher_pb2.RunStatus.ValueType(99))
    )
    assert event.status is RunStatus.UNSPECIFIED


def test_enum_values_match_the_protos() -> None:
    assert int(RunStatus.COMPLETED) == int(teacher_pb2.RUN_STATUS_COMPLETED)
    assert int(BatchStatus.CANCELLED) == int(teacher_pb2.BATCH_STATUS_CANCELLED)
    assert int(DatasetStatus.FAILED) == int(dataset_pb2.DATASET_STATUS_FAILED)
    assert int(EvidenceStatus.POSTED) == int(evidence_pb2.EVIDENCE_STATUS_POSTED)
    for enum_cls, proto_enum in [
        (RunStatus, teacher_pb2.RunStatus),
        (BatchStatus, teacher_pb2.BatchStatus),
        (DatasetStatus, dataset_pb2.DatasetStatus),
        (EvidenceStatus, evidence_pb2.EvidenceStatus),
    ]:
        assert len(enum_cls) == len(proto_enum.keys())


def test_filters_round_trip() -> None:
    filters: list[Filter] = [
        LengthFilter(min_chars=10),
        RegexFilter(r"^\d+$"),
        RegexFilter("bad", must_match=False),
        EntropyFilter(max=2.5),
        BooleanFilter("finish_reason_stop"),
        ScoreFilter("judge", min=0.5),
    ]
    protos = [_convert.filter_to_proto(f) for f in filters]
    assert protos[0].length.HasField("min_chars") and not protos[0].length.HasField("max_chars")
    assert protos[1].regex.must_match is True
    assert [_convert.filter_from_proto(p) for p in protos] == filters
    with pytest.raises(TypeError):
        _convert.filter_to_proto("length")  # type: ignore[arg-type]  # deliberately not a Filter


def test_dataset_conversion() -> None:
    ds = _convert.dataset(
        dataset_pb2.DatasetManifest(
            id="d",
            name="n",
            version="1",
            status=dataset_pb2.DATASET_STATUS_READY,
            files=[dataset_pb2.DatasetFile(name="x.parquet", sha256="ab", rows=3, bytes=100)],
            counts=dataset_pb2.DatasetCounts(
                total=5,
                kept=3,
                dropped=[dataset_pb2.FilterDrop(index=0, filter="length(min_chars=10)", dropped=2)],
            ),
            batch_ids=["b1"],
            filters=[dataset_pb2.Filter(length=dataset_pb2.LengthFilter(min_chars=10))],
        )
    )
    assert ds.status is DatasetStatus.READY and ds.status.is_terminal
    assert ds.files[0].bytes == 100
    assert ds.counts.dropped[0].dropped == 2
    assert ds.filters == (LengthFilter(min_chars=10),)
    assert ds.error is None and ds.ready_time is None


def test_evidence_conversion() -> None:
    link = _convert.evidence_link(
        evidence_pb2.EvidenceLink(
            id="e", context_ref_id="c", run_id="r", status=evidence_pb2.EVIDENCE_STATUS_PENDING
        )
    )
    assert link.run_id == "r" and link.dataset_id is None and link.last_error is None
    assert link.status is EvidenceStatus.PENDING


def test_run_input_conversion() -> None:
    assert _convert.run_input({"a": "1"}).request_id == ""
    msg = _convert.run_input(RunInput({"a": "1"}, request_id="k"))
    assert dict(msg.variables) == {"a": "1"} and msg.request_id == "k"


# ---------------------------------------------------------- error mapping


def _any(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _rpc_error(
    code: grpc.StatusCode, details: str, *detail_msgs: Message, raw: bytes | None = None
) -> aio.AioRpcError:
    trailing = aio.Metadata()
    if detail_msgs or raw is not None:
        status = status_pb2.Status(
            code=code.value[0], message=details, details=[_any(m) for m in detail_msgs]
        )
        trailing.add(
            "grpc-status-details-bin", raw if raw is not None else status.SerializeToString()
        )
    return aio.AioRpcError(code, aio.Metadata(), trailing, details, None)


def test_invalid_argument_with_field_violations_and_error_info() -> None:
    err = _errors.from_rpc_error(
        _rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "runs[1]: missing variable",
            error_details_pb2.ErrorInfo(
                reason="MISSING_VARIABLE", domain="collector.nex", metadata={"variable": "topic"}
            ),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="runs[1].variables", description="missing 'topic'"
                    )
                ]
            ),
        )
    )
    assert isinstance(err, InvalidArgumentError)
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason == "MISSING_VARIABLE" and err.domain == "collector.nex"
    assert err.metadata == {"variable": "topic"}
    assert err.field_violations == [FieldViolation("runs[1].variables", "missing 'topic'")]
    assert "runs[1].variables" in str(err) and "MISSING_VARIABLE" in str(err)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.CANCELLED, RpcCancelledError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.ABORTED, CollectorError),
    ],
)
def test_codes_map_to_classes(code: grpc.StatusCode, cls: type[CollectorError]) -> None:
    err = _errors.from_rpc_error(_rpc_error(code, "msg"))
    assert type(err) is cls
    assert err.code is code and err.message == "msg"
    assert err.reason is None and err.field_violations == [] and err.metadata == {}


def test_retry_info_and_garbage_details() -> None:
    err = _errors.from_rpc_error(
        _rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2)),
        )
    )
    assert err.retry_delay == 2.0
    broken = _errors.from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, "x", raw=b"\xff\xff"))
    assert isinstance(broken, NotFoundError) and broken.reason is None


def test_map_errors_keeps_the_cause() -> None:
    original = _rpc_error(grpc.StatusCode.NOT_FOUND, "no such batch")
    with pytest.raises(NotFoundError) as info, _errors.map_errors():
        raise original
    assert info.value.__cause__ is original


def test_map_errors_leaves_other_exceptions_alone() -> None:
    with pytest.raises(KeyError), _errors.map_errors():
        raise KeyError("x")


def test_dataset_build_error() -> None:
    manifest = DatasetManifest(
        id="d",
        name="n",
        version="1",
        status=DatasetStatus.FAILED,
        error=RunError(code="NO_RUNS", message="no completed runs"),
    )
    err = DatasetBuildError(manifest)
    assert isinstance(err, CollectorError)
    assert err.reason == "NO_RUNS" and err.dataset is manifest


def test_grpc_code_enum_matches_google_rpc_code() -> None:
    assert grpc.StatusCode.INVALID_ARGUMENT.value[0] == code_pb2.INVALID_ARGUMENT


# ------------------------------------------------------------ watch policy


def test_watch_retry_backoff() -> None:
    policy = WatchRetry(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.delay(0, hint=3.0) == 3.0
    jittered = WatchRetry(initial_backoff=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(0) <= 1.5 for _ in range(50))
    with pytest.raises(ValueError):
        WatchRetry(multiplier=0.5)


def test_transient_errors() -> None:
    def err(code: grpc.StatusCode, msg: str = "") -> CollectorError:
        return _errors.from_rpc_error(_rpc_error(code, msg))

    assert _watch.is_transient(err(grpc.StatusCode.UNAVAILABLE))
    assert _watch.is_transient(err(grpc.StatusCode.CANCELLED))
    assert _watch.is_transient(
        err(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2")
    )
    assert not _watch.is_transient(err(grpc.StatusCode.INTERNAL, "boom"))
    assert not _watch.is_transient(err(grpc.StatusCode.NOT_FOUND))
    assert not _watch.is_transient(err(grpc.StatusCode.UNAUTHENTICATED))


# ------------------------------------------------------- sync mirrors async


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(fn)
        for name, fn in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(fn)
    }


def test_sync_client_mirrors_the_async_client() -> None:
    sync, async_ = _methods(client_pkg.Client), _methods(client_pkg.AsyncClient)
    assert set(sync) == set(async_)
    for name, sig in async_.items():
        params = [(p.name, p.kind, p.default) for p in sig.parameters.values()]
        assert params == [(p.name, p.kind, p.default) for p in sync[name].parameters.values()], name


def test_connect_functions_take_the_same_options() -> None:
    a = inspect.signature(client_pkg.connect).parameters
    b = inspect.signature(client_pkg.connect_async).parameters
    assert [(p.name, p.default) for p in a.values()] == [(p.name, p.default) for p in b.values()]
