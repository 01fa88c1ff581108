"""Typed client for NEX Collector.

Blocking::

    from nex.collector.client import connect

    with connect("127.0.0.1:50051", token="secret") as client:
        ref = client.create_context_ref("ctx-1", "v3")
        for batch in client.list_batches():
            print(batch.name, batch.counts.done, "/", batch.counts.total)

Asynchronous::

    from nex.collector.client import AsyncClient

    async with AsyncClient.connect("127.0.0.1:50051", token="secret") as client:
        async for event in client.watch_batch(batch_id):  # resumes by itself
            print(event.revision, event.run_id, event.status.name)

Every failed call raises a ``CollectorError`` subclass (``NotFoundError``,
``InvalidArgumentError`` with ``.field_violations``, ...).
"""

import importlib as _importlib
import typing as _typing

# The data types are plain Python and load at once; the client, its errors and
# its watch helpers need grpc and protobuf, which cost a few hundred
# milliseconds to import, so they load on first use (a CLI's --help never pays).
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
    DatasetVerification,
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
    Provider,
    ProviderJob,
    ProviderJobProgress,
    RegexFilter,
    RunCounts,
    RunError,
    RunEvent,
    RunInput,
    RunStatus,
    RunView,
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

if _typing.TYPE_CHECKING:
    from ._async_client import AsyncClient, Connecting, connect_async
    from ._errors import (
        AlreadyExistsError,
        CollectorError,
        DatasetBuildError,
        DeadlineExceededError,
        FailedPreconditionError,
        FieldViolation,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        RpcCancelledError,
        UnauthenticatedError,
        UnavailableError,
        UnimplementedError,
    )
    from ._sync_client import Client, connect
    from ._watch import WatchRetry

_LAZY = {
    "AsyncClient": "_async_client",
    "Connecting": "_async_client",
    "connect_async": "_async_client",
    "Client": "_sync_client",
    "connect": "_sync_client",
    "WatchRetry": "_watch",
    **dict.fromkeys(
        (
            "AlreadyExistsError",
            "CollectorError",
            "DatasetBuildError",
            "DeadlineExceededError",
            "FailedPreconditionError",
            "FieldViolation",
            "InternalError",
            "InvalidArgumentError",
            "NotFoundError",
            "PermissionDeniedError",
            "ResourceExhaustedError",
            "RpcCancelledError",
            "UnauthenticatedError",
            "UnavailableError",
            "UnimplementedError",
        ),
        "_errors",
    ),
}


def __getattr__(name: str) -> _typing.Any:
    """Loads the grpc-backed names on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "BatchBudget",
    "BatchPause",
    "BatchStatus",
    "BooleanFilter",
    "Client",
    "CollectorError",
    "Connecting",
    "ContextRef",
    "CostEstimate",
    "DatasetBuildError",
    "DatasetCounts",
    "DatasetFile",
    "DatasetManifest",
    "DatasetStatus",
    "DatasetVerification",
    "DeadlineExceededError",
    "EntropyFilter",
    "EvidenceLink",
    "EvidenceStatus",
    "ExecutionMode",
    "FailedPreconditionError",
    "FieldViolation",
    "Filter",
    "FilterDrop",
    "GenerationParams",
    "InternalError",
    "InvalidArgumentError",
    "LengthFilter",
    "Message",
    "NotFoundError",
    "PermissionDeniedError",
    "PromptTemplate",
    "Provider",
    "ProviderJob",
    "ProviderJobProgress",
    "RegexFilter",
    "ResourceExhaustedError",
    "RpcCancelledError",
    "RunCounts",
    "RunError",
    "RunEvent",
    "RunInput",
    "RunStatus",
    "RunView",
    "ScoreFilter",
    "TeacherBatch",
    "TeacherBatchSupport",
    "TeacherCapabilities",
    "TeacherEndpoint",
    "TeacherKind",
    "TeacherLimits",
    "TeacherModelPrice",
    "TeacherRun",
    "TeacherUsage",
    "TokenLogprob",
    "TopLogprob",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "Usage",
    "WatchRetry",
    "connect",
    "connect_async",
]
