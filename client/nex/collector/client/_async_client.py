"""The asyncio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
from google.protobuf import field_mask_pb2
from grpc import aio

from nex.collector.v1 import (
    context_ref_service_pb2,
    context_ref_service_pb2_grpc,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    evidence_service_pb2,
    evidence_service_pb2_grpc,
    teacher_pb2,
    teacher_service_pb2,
    teacher_service_pb2_grpc,
    template_service_pb2,
    template_service_pb2_grpc,
)

from . import _arrow, _convert
from ._auth import bearer_token_interceptors
from ._errors import (
    CollectorError,
    DatasetBuildError,
    UnavailableError,
    from_rpc_error,
    map_errors,
)
from ._types import (
    ContextRef,
    CostEstimate,
    DatasetManifest,
    DatasetStatus,
    DatasetVerification,
    EvidenceLink,
    ExecutionMode,
    Filter,
    GenerationParams,
    PromptTemplate,
    ProviderJobProgress,
    RunEvent,
    RunInput,
    RunStatus,
    RunView,
    TeacherBatch,
    TeacherEndpoint,
    TeacherRun,
)
from ._watch import WatchRetry, is_transient

if TYPE_CHECKING:
    import pyarrow as pa

DEFAULT_TARGET = "127.0.0.1:50051"

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")
_P = TypeVar("_P", bound="_Page")

# The channel notices a restarted server within a few seconds instead of
# gRPC's default reconnect backoff of up to two minutes.
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


# A watch asks for many events per message: a server that batches sends a
# watcher that is behind its events in a few messages instead of one each.
_EVENTS_PER_MESSAGE = 1000


class _Page(Protocol):
    @property
    def next_page_token(self) -> str: ...


def _rid(request_id: str | None) -> str:
    return request_id or ""


class AsyncClient:
    """Asynchronous client of every NEX Collector service.

    Create it with ``await AsyncClient.connect(...)`` or
    ``async with AsyncClient.connect(...) as client:``. One client (one HTTP/2
    channel) serves any number of concurrent calls; share it.

    ``timeout`` is the deadline in seconds of every unary call (None: none);
    streams have no deadline. Failed calls raise a ``CollectorError``
    subclass. ``list_*`` methods return lazy iterators that fetch the next
    page on demand.
    """

    def __init__(
        self,
        channel: aio.Channel,
        *,
        timeout: float | None = 30,
        watch_retry: WatchRetry | None = None,
    ) -> None:
        """Wraps an existing channel (prefer ``connect``, which also sets up auth)."""
        self._channel = channel
        self.timeout = timeout
        self.watch_retry = watch_retry or WatchRetry()
        self._context_refs = context_ref_service_pb2_grpc.ContextRefServiceStub(channel)
        self._templates = template_service_pb2_grpc.TemplateServiceStub(channel)
        self._teacher = teacher_service_pb2_grpc.TeacherServiceStub(channel)
        self._datasets = dataset_service_pb2_grpc.DatasetServiceStub(channel)
        self._evidence = evidence_service_pb2_grpc.EvidenceServiceStub(channel)

    # ------------------------------------------------------------- lifecycle

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_TARGET,
        token: str | None = None,
        *,
        timeout: float | None = 30,
        tls: bool | grpc.ChannelCredentials = False,
        lazy: bool = False,
        watch_retry: WatchRetry | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> Connecting:
        """Connects to ``target`` (``host:port``), sending ``token`` as a bearer token.

        Await it (``client = await AsyncClient.connect()``) or use it as an
        async context manager. Unless ``lazy``, waits up to ``timeout`` for the
        server and raises ``UnavailableError`` when it cannot be reached.
        ``tls``: True for TLS with the system roots, or explicit credentials.
        ``options``: extra gRPC channel arguments.
        """
        return Connecting(
            cls._open(
                target,
                token,
                timeout=timeout,
                tls=tls,
                lazy=lazy,
                watch_retry=watch_retry,
                options=options,
            )
        )

    @classmethod
    async def _open(
        cls,
        target: str,
        token: str | None,
        *,
        timeout: float | None,  # noqa: ASYNC109
        tls: bool | grpc.ChannelCredentials,
        lazy: bool,
        watch_retry: WatchRetry | None,
        options: Iterable[tuple[str, Any]],
    ) -> AsyncClient:
        interceptors = bearer_token_interceptors(token) if token else []
        opts = dict(_CHANNEL_OPTIONS)
        opts.update(options)
        channel_options = list(opts.items())
        if tls is False:
            channel = aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        else:
            creds = grpc.ssl_channel_credentials() if tls is True else tls
            channel = aio.secure_channel(
                target, creds, options=channel_options, interceptors=interceptors
            )
        if not lazy:
            try:
                async with asyncio.timeout(timeout):
                    await channel.channel_ready()
            except TimeoutError:
                await channel.close(None)
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"could not connect to {target} within {timeout} s",
                ) from None
            except BaseException:
                await channel.close(None)
                raise
        return cls(channel, timeout=timeout, watch_retry=watch_retry)

    async def close(self) -> None:
        """Closes the channel, cancelling calls in flight."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --------------------------------------------------------------- helpers

    async def _call(self, method: aio.UnaryUnaryMultiCallable[_Req, _Resp], request: _Req) -> _Resp:
        with map_errors():
            return await method(request, timeout=self.timeout)

    async def _list(
        self,
        method: aio.UnaryUnaryMultiCallable[_Req, _P],
        request: Callable[[str], _Req],
        items: Callable[[_P], Iterable[_T]],
    ) -> AsyncIterator[_T]:
        """The items of every page of a ``List*`` call, each page fetched on
        demand; ``request(page_token)`` builds the request for a page."""
        token = ""
        while True:
            page = await self._call(method, request(token))
            for item in items(page):
                yield item
            token = page.next_page_token
            if not token:
                return

    # ---------------------------------------------------------- context refs

    async def create_context_ref(
        self,
        nex_context_id: str,
        nex_context_version: str,
        *,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> ContextRef:
        """Registers a NEX context version; the same pair again returns the existing one."""
        resp = await self._call(
            self._context_refs.CreateContextRef,
            context_ref_service_pb2.CreateContextRefRequest(
                nex_context_id=nex_context_id,
                nex_context_version=nex_context_version,
                labels=dict(labels or {}),
                request_id=_rid(request_id),
            ),
        )
        return _convert.context_ref(resp.context_ref)

    async def get_context_ref(self, id: str) -> ContextRef:
        resp = await self._call(
            self._context_refs.GetContextRef, context_ref_service_pb2.GetContextRefRequest(id=id)
        )
        return _convert.context_ref(resp.context_ref)

    def list_context_refs(
        self, *, nex_context_id: str | None = None, page_size: int = 0
    ) -> AsyncIterator[ContextRef]:
        return self._list(
            self._context_refs.ListContextRefs,
            lambda token: context_ref_service_pb2.ListContextRefsRequest(
                nex_context_id=nex_context_id or "", page_size=page_size, page_token=token
            ),
            lambda page: map(_convert.context_ref, page.context_refs),
        )

    # ------------------------------------------------------------- templates

    async def create_template(
        self,
        name: str,
        *,
        user_template: str,
        system_template: str = "",
        variables: Iterable[str] = (),
        context_ref_id: str | None = None,
        request_id: str | None = None,
    ) -> PromptTemplate:
        """Creates the next version of template ``name``. Every placeholder must be
        declared in ``variables``."""
        resp = await self._call(
            self._templates.CreateTemplate,
            template_service_pb2.CreateTemplateRequest(
                name=name,
                system_template=system_template,
                user_template=user_template,
                variables=list(variables),
                context_ref_id=context_ref_id or "",
                request_id=_rid(request_id),
            ),
        )
        return _convert.template(resp.template)

    async def get_template(self, id: str) -> PromptTemplate:
        resp = await self._call(
            self._templates.GetTemplate, template_service_pb2.GetTemplateRequest(id=id)
        )
        return _convert.template(resp.template)

    def list_templates(
        self, name: str | None = None, *, page_size: int = 0
    ) -> AsyncIterator[PromptTemplate]:
        return self._list(
            self._templates.ListTemplates,
            lambda token: template_service_pb2.ListTemplatesRequest(
                name=name or "", page_size=page_size, page_token=token
            ),
            lambda page: map(_convert.template, page.templates),
        )

    # --------------------------------------------------------------- batches

    async def create_batch(
        self,
        name: str,
        template_id: str,
        provider: str,
        model: str,
        *,
        params: GenerationParams | None = None,
        context_ref_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
        link_evidence: bool = False,
        max_cost_usd: float | None = None,
        execution_mode: ExecutionMode = ExecutionMode.UNSPECIFIED,
        deadline: datetime | timedelta | None = None,
    ) -> TeacherBatch:
        """Creates an empty batch; add runs with ``create_run`` / ``create_runs``.
        ``max_cost_usd`` is a hard cap on what its teacher calls may cost (it
        needs ``params.max_tokens`` and a priced model). ``execution_mode``
        PROVIDER_BATCH sends the runs through the teacher's Batch API (about
        half the price, results within 24 h); AUTO also goes online for what
        is not done by ``deadline`` (a time, or a duration from now) minus a
        margin."""
        request = teacher_service_pb2.CreateBatchRequest(
            execution_mode=teacher_pb2.ExecutionMode.ValueType(execution_mode),
        )
        if isinstance(deadline, timedelta):
            request.deadline_after.FromTimedelta(deadline)
        elif deadline is not None:
            request.deadline_time.FromDatetime(deadline)
        resp = await self._call(
            self._teacher.CreateBatch,
            teacher_service_pb2.CreateBatchRequest(
                name=name,
                template_id=template_id,
                provider=str(provider),
                model=model,
                params=_convert.params_to_proto(params or GenerationParams()),
                context_ref_id=context_ref_id or "",
                labels=dict(labels or {}),
                request_id=_rid(request_id),
                link_evidence=link_evidence,
                max_cost_usd=max_cost_usd,
                execution_mode=request.execution_mode,
                deadline_time=request.deadline_time if request.HasField("deadline_time") else None,
                deadline_after=request.deadline_after
                if request.HasField("deadline_after")
                else None,
            ),
        )
        return _convert.batch(resp.batch)

    async def update_batch(self, id: str, *, max_cost_usd: float | None) -> TeacherBatch:
        """Sets (None: removes) the batch's cost cap. Raising the cap of a batch
        paused with ``BUDGET_EXHAUSTED`` resumes it."""
        resp = await self._call(
            self._teacher.UpdateBatch,
            teacher_service_pb2.UpdateBatchRequest(
                batch=teacher_pb2.TeacherBatch(id=id, max_cost_usd=max_cost_usd),
                update_mask=field_mask_pb2.FieldMask(paths=["max_cost_usd"]),
            ),
        )
        return _convert.batch(resp.batch)

    async def estimate_batch(
        self,
        template_id: str,
        provider: str,
        model: str,
        runs: Iterable[Mapping[str, str] | RunInput],
        *,
        params: GenerationParams | None = None,
    ) -> CostEstimate:
        """The worst-case cost of a would-be batch: the server renders each input,
        creates nothing and calls no teacher."""
        resp = await self._call(
            self._teacher.EstimateBatch,
            teacher_service_pb2.EstimateBatchRequest(
                template_id=template_id,
                provider=str(provider),
                model=model,
                params=_convert.params_to_proto(params or GenerationParams()),
                runs=[_convert.run_input(r) for r in runs],
            ),
        )
        return _convert.cost_estimate(resp.estimate)

    async def get_batch(self, id: str) -> TeacherBatch:
        resp = await self._call(self._teacher.GetBatch, teacher_service_pb2.GetBatchRequest(id=id))
        return _convert.batch(resp.batch)

    def list_batches(self, *, page_size: int = 0) -> AsyncIterator[TeacherBatch]:
        return self._list(
            self._teacher.ListBatches,
            lambda token: teacher_service_pb2.ListBatchesRequest(
                page_size=page_size, page_token=token
            ),
            lambda page: map(_convert.batch, page.batches),
        )

    async def cancel_batch(self, id: str) -> TeacherBatch:
        """Cancels every queued run; running ones end cancelled when they return."""
        resp = await self._call(
            self._teacher.CancelBatch, teacher_service_pb2.CancelBatchRequest(id=id)
        )
        return _convert.batch(resp.batch)

    # ------------------------------------------------------------------ runs

    async def create_run(
        self, batch_id: str, variables: Mapping[str, str], *, request_id: str | None = None
    ) -> TeacherRun:
        """Renders the batch's template with ``variables`` and queues one run."""
        resp = await self._call(
            self._teacher.CreateRun,
            teacher_service_pb2.CreateRunRequest(
                batch_id=batch_id, variables=dict(variables), request_id=_rid(request_id)
            ),
        )
        return _convert.run(resp.run)

    async def create_runs(
        self, batch_id: str, runs: Iterable[Mapping[str, str] | RunInput]
    ) -> list[TeacherRun]:
        """Queues many runs in one atomic call (one bad input creates nothing; the
        error's ``field_violations`` name it, e.g. ``runs[3].variables``). Pass
        ``RunInput(variables, request_id)`` for per-run idempotency keys.
        Returns the runs in the order given, each with its id, status and
        request id only (``get_run`` has the variables and rendered prompt)."""
        resp = await self._call(
            self._teacher.BatchCreateRuns,
            teacher_service_pb2.BatchCreateRunsRequest(
                batch_id=batch_id, runs=[_convert.run_input(r) for r in runs]
            ),
        )
        return [_convert.run(r) for r in resp.runs]

    async def get_run(self, id: str, *, view: RunView = RunView.FULL) -> TeacherRun:
        resp = await self._call(
            self._teacher.GetRun,
            teacher_service_pb2.GetRunRequest(id=id, view=teacher_pb2.RunView.ValueType(view)),
        )
        return _convert.run(resp.run)

    def list_runs(
        self,
        batch_id: str,
        *,
        status: RunStatus | None = None,
        view: RunView = RunView.BASIC,
        page_size: int = 0,
    ) -> AsyncIterator[TeacherRun]:
        return self._list(
            self._teacher.ListRuns,
            lambda token: teacher_service_pb2.ListRunsRequest(
                batch_id=batch_id,
                status=teacher_pb2.RunStatus.ValueType(status or 0),
                view=teacher_pb2.RunView.ValueType(view),
                page_size=page_size,
                page_token=token,
            ),
            lambda page: map(_convert.run, page.runs),
        )

    async def set_run_scores(self, run_id: str, scores: Mapping[str, float]) -> TeacherRun:
        """Merges named scores into a completed run's scores."""
        resp = await self._call(
            self._teacher.SetRunScores,
            teacher_service_pb2.SetRunScoresRequest(run_id=run_id, scores=dict(scores)),
        )
        return _convert.run(resp.run)

    async def list_teachers(self) -> list[TeacherEndpoint]:
        """The teachers a batch's ``provider`` may name, with their limits,
        prices and live usage (never a key)."""
        resp = await self._call(
            self._teacher.ListTeachers, teacher_service_pb2.ListTeachersRequest()
        )
        return [_convert.teacher_endpoint(t) for t in resp.teachers]

    # --------------------------------------------------------------- watches

    def watch_runs(
        self,
        *,
        batch_id: str | None = None,
        run_id: str | None = None,
        after_revision: int = 0,
        follow: bool = False,
        reconnect: bool = False,
        retry: WatchRetry | None = None,
        on_provider_job: Callable[[ProviderJobProgress], None] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Streams the run events of a batch or of one run (give exactly one):
        first every stored event after ``after_revision``, then live ones.
        Heartbeats are skipped. A run watch ends after the run's terminal
        event; a batch watch once no run is queued or running, unless
        ``follow``. With ``reconnect`` it resumes like ``watch_batch``.
        ``on_provider_job``: see ``watch_batch``."""
        if batch_id is not None and run_id is not None:
            raise ValueError("give batch_id or run_id, not both")
        return self._watch(
            batch_id=batch_id,
            run_id=run_id,
            after_revision=after_revision,
            follow=follow,
            retry=(retry or self.watch_retry) if reconnect else None,
            on_provider_job=on_provider_job,
        )

    def watch_batch(
        self,
        batch_id: str,
        *,
        after_revision: int = 0,
        follow: bool = False,
        retry: WatchRetry | None = None,
        on_provider_job: Callable[[ProviderJobProgress], None] | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Streams a batch's run events, reconnecting by itself.

        When the stream breaks (server restart, connection loss, UNAVAILABLE)
        it reopens it after the last revision seen, with the backoff of
        ``retry`` (default: the client's ``watch_retry``); no event is yielded
        twice or skipped. Raises the last error after ``retry.give_up_after``
        seconds without contact.

        ``on_provider_job`` is called with each ``ProviderJobProgress`` of a
        batch run through provider batch jobs: the latest of each job when the
        watch starts (again after a reconnect) and each change of its state or
        counts, in stream order with the events (a progress comes after every
        event committed before it). Without it, progress is skipped."""
        return self._watch(
            batch_id=batch_id,
            run_id=None,
            after_revision=after_revision,
            follow=follow,
            retry=retry or self.watch_retry,
            on_provider_job=on_provider_job,
        )

    def watch_run(
        self,
        run_id: str,
        *,
        after_revision: int = 0,
        retry: WatchRetry | None = None,
    ) -> AsyncIterator[RunEvent]:
        """Streams one run's events until its terminal event, reconnecting like
        ``watch_batch``."""
        return self._watch(
            batch_id=None,
            run_id=run_id,
            after_revision=after_revision,
            follow=False,
            retry=retry or self.watch_retry,
        )

    async def _watch(
        self,
        *,
        batch_id: str | None,
        run_id: str | None,
        after_revision: int,
        follow: bool,
        retry: WatchRetry | None,
        on_provider_job: Callable[[ProviderJobProgress], None] | None = None,
    ) -> AsyncIterator[RunEvent]:
        last = after_revision
        failures = 0
        outage_since: float | None = None
        idle = retry.idle_timeout if retry else None
        while True:
            request = teacher_service_pb2.WatchRunsRequest(
                after_revision=last, follow=follow, max_events_per_message=_EVENTS_PER_MESSAGE
            )
            if run_id is not None:
                request.run_id = run_id
            elif batch_id is not None:
                request.batch_id = batch_id
            call = self._teacher.WatchRuns(request)
            error: CollectorError
            try:
                while True:
                    try:
                        async with asyncio.timeout(idle):
                            msg = await call.read()
                    except grpc.RpcError as err:
                        raise from_rpc_error(err) from err
                    if not isinstance(msg, teacher_service_pb2.WatchRunsResponse):
                        break  # EOF: the server ended the stream normally
                    failures, outage_since = 0, None  # the server is alive
                    kind = msg.WhichOneof("kind")
                    if kind == "event":
                        received: Iterable[teacher_pb2.RunEvent] = (msg.event,)
                    elif kind == "events":  # many at once, from a server that batches
                        received = msg.events.events
                    else:
                        if kind == "provider_job" and on_provider_job is not None:
                            on_provider_job(_convert.provider_job_progress(msg.provider_job))
                        continue  # heartbeats, and kinds of newer servers
                    for item in received:
                        if item.revision <= last:
                            continue  # never yield an event twice
                        event = _convert.run_event(item)
                        last = event.revision
                        yield event
                    # A run watch ends after the run's terminal event: the server
                    # closes the stream with OK right after it, read below.
                # The server ended the stream with OK: the watch is over, except a
                # followed batch watch, which only a stopping server ends.
                if retry is None or not follow or run_id is not None:
                    return
                error = UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, "the followed watch stream ended"
                )
            except TimeoutError:
                error = UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, f"no message from the server for {idle} s"
                )
            except CollectorError as err:
                if retry is None or not is_transient(err):
                    raise
                error = err
            finally:
                call.cancel()
            if retry is None:
                raise error
            now = time.monotonic()
            if outage_since is None:
                outage_since = now
            if retry.give_up_after is not None and now - outage_since >= retry.give_up_after:
                raise error
            delay = retry.delay(failures, error.retry_delay)
            if retry.give_up_after is not None:
                delay = min(delay, max(0.0, outage_since + retry.give_up_after - now))
            failures += 1
            await asyncio.sleep(delay)

    # -------------------------------------------------------------- datasets

    async def build_dataset(
        self,
        name: str,
        version: str,
        batch_ids: Iterable[str],
        *,
        filters: Iterable[Filter] = (),
        request_id: str | None = None,
        context_ref_id: str | None = None,
        link_evidence: bool = False,
        allow_empty: bool = False,
        parts: int = 1,
    ) -> DatasetManifest:
        """Starts a build from the completed runs of ``batch_ids``; returns the
        manifest in ``DatasetStatus.BUILDING`` (see ``wait_dataset``). Filters
        apply in order; a run is kept when every filter keeps it. A build that
        keeps no run fails with ``EMPTY_DATASET`` (leaving the version free)
        unless ``allow_empty``. ``parts`` > 1 splits the build into that many parts
        that several workers write at once (read back as one table)."""
        resp = await self._call(
            self._datasets.BuildDataset,
            dataset_service_pb2.BuildDatasetRequest(
                name=name,
                version=version,
                batch_ids=list(batch_ids),
                filters=[_convert.filter_to_proto(f) for f in filters],
                request_id=_rid(request_id),
                context_ref_id=context_ref_id or "",
                link_evidence=link_evidence,
                allow_empty=allow_empty,
                parts=parts,
            ),
        )
        return _convert.dataset(resp.dataset)

    async def get_dataset(self, id: str) -> DatasetManifest:
        resp = await self._call(
            self._datasets.GetDataset, dataset_service_pb2.GetDatasetRequest(id=id)
        )
        return _convert.dataset(resp.dataset)

    def list_datasets(
        self, name: str | None = None, *, page_size: int = 0
    ) -> AsyncIterator[DatasetManifest]:
        return self._list(
            self._datasets.ListDatasets,
            lambda token: dataset_service_pb2.ListDatasetsRequest(
                name=name or "", page_size=page_size, page_token=token
            ),
            lambda page: map(_convert.dataset, page.datasets),
        )

    async def wait_dataset(
        self,
        id: str,
        *,
        timeout: float | None = 600,  # noqa: ASYNC109
        poll_interval: float = 0.5,
        raise_on_failure: bool = True,
    ) -> DatasetManifest:
        """Polls until the build is READY or FAILED and returns the manifest.

        A FAILED build raises ``DatasetBuildError`` (its ``.dataset`` is the
        manifest) unless ``raise_on_failure=False``, which returns it for the
        caller to check ``.status``. Raises ``TimeoutError`` after ``timeout``
        seconds (None: wait forever)."""
        async with asyncio.timeout(timeout):
            while True:
                manifest = await self.get_dataset(id)
                if manifest.status == DatasetStatus.FAILED and raise_on_failure:
                    raise DatasetBuildError(manifest)
                if manifest.status.is_terminal:
                    return manifest
                await asyncio.sleep(poll_interval)

    async def iter_dataset_batches(
        self,
        dataset_id: str,
        *,
        file: str,
        columns: Iterable[str] = (),
        offset: int = 0,
        limit: int = 0,
    ) -> AsyncIterator[pa.RecordBatch]:
        """Streams rows of one file of a READY dataset (``"targets.parquet"`` or
        ``"targets"``) as ``pyarrow.RecordBatch`` es, read by the server from
        wherever the dataset is stored: no file system or bucket access needed.
        ``columns``: those, in that order (default all); rows ``[offset, offset +
        limit)`` (``limit`` 0: to the end). Needs pyarrow (the ``[arrow]``
        extra). The stream has no deadline; memory holds one batch at a time."""
        _arrow.require_pyarrow()
        request = dataset_service_pb2.ReadDatasetRequest(
            dataset_id=dataset_id, file=file, columns=list(columns), offset=offset, limit=limit
        )
        call = self._datasets.ReadDataset(request)
        schema = None
        try:
            while True:
                try:
                    msg = await call.read()
                except grpc.RpcError as err:
                    raise from_rpc_error(err) from err
                if not isinstance(msg, dataset_service_pb2.ReadDatasetResponse):
                    return  # EOF
                if schema is None:
                    schema = _arrow.schema_from_message(msg.arrow_ipc)
                    continue
                yield _arrow.batch_from_message(msg.arrow_ipc, schema)
        finally:
            call.cancel()

    async def read_dataset(
        self,
        dataset_id: str,
        *,
        file: str,
        columns: Iterable[str] = (),
        offset: int = 0,
        limit: int = 0,
    ) -> pa.Table:
        """One file of a READY dataset (or the rows and columns asked for) as a
        ``pyarrow.Table``; see ``iter_dataset_batches``, which holds less in memory."""
        pa = _arrow.require_pyarrow()
        request = dataset_service_pb2.ReadDatasetRequest(
            dataset_id=dataset_id, file=file, columns=list(columns), offset=offset, limit=limit
        )
        schema = None
        batches = []
        with map_errors():
            async for msg in self._datasets.ReadDataset(request):
                if schema is None:
                    schema = _arrow.schema_from_message(msg.arrow_ipc)
                else:
                    batches.append(_arrow.batch_from_message(msg.arrow_ipc, schema))
        return pa.Table.from_batches(batches, schema=schema)

    async def verify_dataset(
        self,
        id: str,
        *,
        timeout: float | None = 600,  # noqa: ASYNC109
    ) -> DatasetVerification:
        """Has the server recompute every file's sha256, size, rows and schema
        where the files are stored and compare them with the manifest; the
        ``problems`` found (empty: intact). It reads every byte of the dataset:
        ``timeout`` (seconds, None: none) is this call's own."""
        with map_errors():
            resp = await self._datasets.VerifyDataset(
                dataset_service_pb2.VerifyDatasetRequest(id=id), timeout=timeout
            )
        return DatasetVerification(
            dataset=_convert.dataset(resp.dataset), problems=tuple(resp.problems)
        )

    # -------------------------------------------------------------- evidence

    async def create_evidence_link(
        self,
        context_ref_id: str,
        *,
        dataset_id: str | None = None,
        run_id: str | None = None,
        kind: str = "evidence",
        note: str = "",
        request_id: str | None = None,
    ) -> EvidenceLink:
        """Links a dataset or a run (give one) to a NEX context; integrated mode
        only (standalone answers ``FailedPreconditionError``)."""
        if dataset_id is not None and run_id is not None:
            raise ValueError("give dataset_id or run_id, not both")
        request = evidence_service_pb2.CreateEvidenceLinkRequest(
            context_ref_id=context_ref_id, kind=kind, note=note, request_id=_rid(request_id)
        )
        if dataset_id is not None:
            request.dataset_id = dataset_id
        elif run_id is not None:
            request.run_id = run_id
        resp = await self._call(self._evidence.CreateEvidenceLink, request)
        return _convert.evidence_link(resp.evidence_link)

    async def get_evidence_link(self, id: str) -> EvidenceLink:
        resp = await self._call(
            self._evidence.GetEvidenceLink, evidence_service_pb2.GetEvidenceLinkRequest(id=id)
        )
        return _convert.evidence_link(resp.evidence_link)

    def list_evidence_links(
        self, context_ref_id: str | None = None, *, page_size: int = 0
    ) -> AsyncIterator[EvidenceLink]:
        return self._list(
            self._evidence.ListEvidenceLinks,
            lambda token: evidence_service_pb2.ListEvidenceLinksRequest(
                context_ref_id=context_ref_id or "", page_size=page_size, page_token=token
            ),
            lambda page: map(_convert.evidence_link, page.evidence_links),
        )


class Connecting:
    """What ``AsyncClient.connect`` and ``connect_async`` return: a connection
    being opened. Await it for the ``AsyncClient`` (``client = await
    AsyncClient.connect()``; close it yourself), or use it as ``async with
    AsyncClient.connect() as client:`` to close the client on exit. Either
    once: it wraps a single connection attempt."""

    __slots__ = ("_client", "_coro")

    def __init__(self, coro: Awaitable[AsyncClient]) -> None:
        self._coro = coro
        self._client: AsyncClient | None = None

    def __await__(self) -> Generator[Any, None, AsyncClient]:
        return self._coro.__await__()

    async def __aenter__(self) -> AsyncClient:
        self._client = await self._coro
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()


def connect_async(
    target: str = DEFAULT_TARGET,
    token: str | None = None,
    *,
    timeout: float | None = 30,
    tls: bool | grpc.ChannelCredentials = False,
    lazy: bool = False,
    watch_retry: WatchRetry | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> Connecting:
    """``AsyncClient.connect``: ``client = await connect_async(target, token)``."""
    return AsyncClient.connect(
        target,
        token,
        timeout=timeout,
        tls=tls,
        lazy=lazy,
        watch_retry=watch_retry,
        options=options,
    )
