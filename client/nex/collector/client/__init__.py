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

from ._async_client import AsyncClient, connect_async
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
from ._types import (
    BatchStatus,
    BooleanFilter,
    ContextRef,
    DatasetCounts,
    DatasetFile,
    DatasetManifest,
    DatasetStatus,
    EntropyFilter,
    EvidenceLink,
    EvidenceStatus,
    Filter,
    FilterDrop,
    GenerationParams,
    LengthFilter,
    Message,
    PromptTemplate,
    Provider,
    RegexFilter,
    RunCounts,
    RunError,
    RunEvent,
    RunInput,
    RunStatus,
    RunView,
    ScoreFilter,
    TeacherBatch,
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
from ._watch import WatchRetry

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "BatchStatus",
    "BooleanFilter",
    "Client",
    "CollectorError",
    "ContextRef",
    "DatasetBuildError",
    "DatasetCounts",
    "DatasetFile",
    "DatasetManifest",
    "DatasetStatus",
    "DeadlineExceededError",
    "EntropyFilter",
    "EvidenceLink",
    "EvidenceStatus",
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
