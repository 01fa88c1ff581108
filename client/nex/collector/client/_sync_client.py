"""The blocking client: the asyncio client driven on a private event-loop thread.

One implementation of every call (errors, pagination, watch resume) serves
both clients. The private loop makes ``Client`` usable from plain scripts,
from worker threads, and even from code running inside another event loop
(the call blocks that loop's thread, as any blocking call does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from ._async_client import DEFAULT_TARGET, AsyncClient
from ._types import (
    ContextRef,
    CostEstimate,
    DatasetManifest,
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
from ._watch import WatchRetry

if TYPE_CHECKING:
    import pyarrow as pa

_T = TypeVar("_T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="nex-collector-client", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            finally:
                self._loop.close()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed() or not self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Runs ``coro`` on the loop and blocks until it is done."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a sync Client cannot be called from its own event loop")
        if self.closed:
            coro.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # KeyboardInterrupt and friends: cancel the work on the loop too.
            future.cancel()
            raise

    def iterate(self, agen: AsyncIterator[_T]) -> Iterator[_T]:
        """Iterates an async iterator from this (another) thread, lazily."""

        async def step() -> _T:
            return await anext(agen)

        try:
            while True:
                try:
                    item = self.run(step())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and not self.closed:
                with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                    self.run(aclose())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join()


class Client:
    """Blocking client of every NEX Collector service; the same methods as
    ``AsyncClient``, returning values instead of awaitables and plain
    iterators for ``list_*`` and watches.

    Create it with ``Client.connect(...)`` or ``connect(...)``, and close it
    (``with`` does) to stop its background thread. Thread-safe.
    """

    def __init__(self, loop: _LoopThread, client: AsyncClient) -> None:
        """Use ``Client.connect``."""
        self._loop = loop
        self._client = client

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
    ) -> Client:
        """Connects to ``target``; see ``AsyncClient.connect`` for the options."""
        loop = _LoopThread()
        try:
            opts = list(options)

            async def open_client() -> AsyncClient:
                return await AsyncClient.connect(
                    target,
                    token,
                    timeout=timeout,
                    tls=tls,
                    lazy=lazy,
                    watch_retry=watch_retry,
                    options=opts,
                )

            client = loop.run(open_client())
        except BaseException:
            loop.stop()
            raise
        return cls(loop, client)

    @property
    def timeout(self) -> float | None:
        return self._client.timeout

    @property
    def watch_retry(self) -> WatchRetry:
        return self._client.watch_retry

    def close(self) -> None:
        """Closes the channel and stops the background thread (idempotent)."""
        if not self._loop.closed:
            try:
                self._loop.run(self._client.close())
            finally:
                self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------- context refs

    def create_context_ref(
        self,
        nex_context_id: str,
        nex_context_version: str,
        *,
        labels: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> ContextRef:
        return self._loop.run(
            self._client.create_context_ref(
                nex_context_id, nex_context_version, labels=labels, request_id=request_id
            )
        )

    def get_context_ref(self, id: str) -> ContextRef:
        return self._loop.run(self._client.get_context_ref(id))

    def list_context_refs(
        self, *, nex_context_id: str | None = None, page_size: int = 0
    ) -> Iterator[ContextRef]:
        return self._loop.iterate(
            self._client.list_context_refs(nex_context_id=nex_context_id, page_size=page_size)
        )

    # ------------------------------------------------------------- templates

    def create_template(
        self,
        name: str,
        *,
        user_template: str,
        system_template: str = "",
        variables: Iterable[str] = (),
        context_ref_id: str | None = None,
        request_id: str | None = None,
    ) -> PromptTemplate:
        return self._loop.run(
            self._client.create_template(
                name,
                user_template=user_template,
                system_template=system_template,
                variables=list(variables),
                context_ref_id=context_ref_id,
                request_id=request_id,
            )
        )

    def get_template(self, id: str) -> PromptTemplate:
        return self._loop.run(self._client.get_template(id))

    def list_templates(
        self, name: str | None = None, *, page_size: int = 0
    ) -> Iterator[PromptTemplate]:
        return self._loop.iterate(self._client.list_templates(name, page_size=page_size))

    # --------------------------------------------------------------- batches

    def create_batch(
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
        return self._loop.run(
            self._client.create_batch(
                name,
                template_id,
                provider,
                model,
                params=params,
                context_ref_id=context_ref_id,
                labels=labels,
                request_id=request_id,
                link_evidence=link_evidence,
                max_cost_usd=max_cost_usd,
                execution_mode=execution_mode,
                deadline=deadline,
            )
        )

    def update_batch(self, id: str, *, max_cost_usd: float | None) -> TeacherBatch:
        return self._loop.run(self._client.update_batch(id, max_cost_usd=max_cost_usd))

    def estimate_batch(
        self,
        template_id: str,
        provider: str,
        model: str,
        runs: Iterable[Mapping[str, str] | RunInput],
        *,
        params: GenerationParams | None = None,
    ) -> CostEstimate:
        return self._loop.run(
            self._client.estimate_batch(template_id, provider, model, list(runs), params=params)
        )

    def get_batch(self, id: str) -> TeacherBatch:
        return self._loop.run(self._client.get_batch(id))

    def list_batches(self, *, page_size: int = 0) -> Iterator[TeacherBatch]:
        return self._loop.iterate(self._client.list_batches(page_size=page_size))

    def cancel_batch(self, id: str) -> TeacherBatch:
        return self._loop.run(self._client.cancel_batch(id))

    # ------------------------------------------------------------------ runs

    def create_run(
        self, batch_id: str, variables: Mapping[str, str], *, request_id: str | None = None
    ) -> TeacherRun:
        return self._loop.run(self._client.create_run(batch_id, variables, request_id=request_id))

    def create_runs(
        self, batch_id: str, runs: Iterable[Mapping[str, str] | RunInput]
    ) -> list[TeacherRun]:
        return self._loop.run(self._client.create_runs(batch_id, list(runs)))

    def get_run(self, id: str, *, view: RunView = RunView.FULL) -> TeacherRun:
        return self._loop.run(self._client.get_run(id, view=view))

    def list_runs(
        self,
        batch_id: str,
        *,
        status: RunStatus | None = None,
        view: RunView = RunView.BASIC,
        page_size: int = 0,
    ) -> Iterator[TeacherRun]:
        return self._loop.iterate(
            self._client.list_runs(batch_id, status=status, view=view, page_size=page_size)
        )

    def set_run_scores(self, run_id: str, scores: Mapping[str, float]) -> TeacherRun:
        return self._loop.run(self._client.set_run_scores(run_id, scores))

    def list_teachers(self) -> list[TeacherEndpoint]:
        """The teachers a batch's ``provider`` may name, with their limits,
        prices and live usage (never a key)."""
        return self._loop.run(self._client.list_teachers())

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
    ) -> Iterator[RunEvent]:
        return self._loop.iterate(
            self._client.watch_runs(
                batch_id=batch_id,
                run_id=run_id,
                after_revision=after_revision,
                follow=follow,
                reconnect=reconnect,
                retry=retry,
                on_provider_job=on_provider_job,
            )
        )

    def watch_batch(
        self,
        batch_id: str,
        *,
        after_revision: int = 0,
        follow: bool = False,
        retry: WatchRetry | None = None,
        on_provider_job: Callable[[ProviderJobProgress], None] | None = None,
    ) -> Iterator[RunEvent]:
        """See ``AsyncClient.watch_batch``; ``on_provider_job`` is called on
        the client's event-loop thread, before the events after it are yielded."""
        return self._loop.iterate(
            self._client.watch_batch(
                batch_id,
                after_revision=after_revision,
                follow=follow,
                retry=retry,
                on_provider_job=on_provider_job,
            )
        )

    def watch_run(
        self, run_id: str, *, after_revision: int = 0, retry: WatchRetry | None = None
    ) -> Iterator[RunEvent]:
        return self._loop.iterate(
            self._client.watch_run(run_id, after_revision=after_revision, retry=retry)
        )

    # -------------------------------------------------------------- datasets

    def build_dataset(
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
        return self._loop.run(
            self._client.build_dataset(
                name,
                version,
                list(batch_ids),
                filters=list(filters),
                request_id=request_id,
                context_ref_id=context_ref_id,
                link_evidence=link_evidence,
                allow_empty=allow_empty,
                parts=parts,
            )
        )

    def get_dataset(self, id: str) -> DatasetManifest:
        return self._loop.run(self._client.get_dataset(id))

    def list_datasets(
        self, name: str | None = None, *, page_size: int = 0
    ) -> Iterator[DatasetManifest]:
        return self._loop.iterate(self._client.list_datasets(name, page_size=page_size))

    def wait_dataset(
        self,
        id: str,
        *,
        timeout: float | None = 600,
        poll_interval: float = 0.5,
        raise_on_failure: bool = True,
    ) -> DatasetManifest:
        return self._loop.run(
            self._client.wait_dataset(
                id,
                timeout=timeout,
                poll_interval=poll_interval,
                raise_on_failure=raise_on_failure,
            )
        )

    def iter_dataset_batches(
        self,
        dataset_id: str,
        *,
        file: str,
        columns: Iterable[str] = (),
        offset: int = 0,
        limit: int = 0,
    ) -> Iterator[pa.RecordBatch]:
        """See ``AsyncClient.iter_dataset_batches``."""
        return self._loop.iterate(
            self._client.iter_dataset_batches(
                dataset_id, file=file, columns=list(columns), offset=offset, limit=limit
            )
        )

    def read_dataset(
        self,
        dataset_id: str,
        *,
        file: str,
        columns: Iterable[str] = (),
        offset: int = 0,
        limit: int = 0,
    ) -> pa.Table:
        """See ``AsyncClient.read_dataset``."""
        return self._loop.run(
            self._client.read_dataset(
                dataset_id, file=file, columns=list(columns), offset=offset, limit=limit
            )
        )

    def verify_dataset(self, id: str, *, timeout: float | None = 600) -> DatasetVerification:
        """See ``AsyncClient.verify_dataset``."""
        return self._loop.run(self._client.verify_dataset(id, timeout=timeout))

    # -------------------------------------------------------------- evidence

    def create_evidence_link(
        self,
        context_ref_id: str,
        *,
        dataset_id: str | None = None,
        run_id: str | None = None,
        kind: str = "evidence",
        note: str = "",
        request_id: str | None = None,
    ) -> EvidenceLink:
        return self._loop.run(
            self._client.create_evidence_link(
                context_ref_id,
                dataset_id=dataset_id,
                run_id=run_id,
                kind=kind,
                note=note,
                request_id=request_id,
            )
        )

    def get_evidence_link(self, id: str) -> EvidenceLink:
        return self._loop.run(self._client.get_evidence_link(id))

    def list_evidence_links(
        self, context_ref_id: str | None = None, *, page_size: int = 0
    ) -> Iterator[EvidenceLink]:
        return self._loop.iterate(
            self._client.list_evidence_links(context_ref_id, page_size=page_size)
        )


def connect(
    target: str = DEFAULT_TARGET,
    token: str | None = None,
    *,
    timeout: float | None = 30,
    tls: bool | grpc.ChannelCredentials = False,
    lazy: bool = False,
    watch_retry: WatchRetry | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> Client:
    """Connects a blocking ``Client``: ``with connect(target, token) as client: ...``."""
    return Client.connect(
        target,
        token,
        timeout=timeout,
        tls=tls,
        lazy=lazy,
        watch_retry=watch_retry,
        options=options,
    )
