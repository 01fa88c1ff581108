"""The shipped client against an in-process fake TeacherService (no database):
auth metadata, error details over the wire, pagination, watch resume, and the
sync client in a thread while another event loop runs."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from nex.collector.client import (
    AsyncClient,
    DatasetBuildError,
    DatasetStatus,
    InvalidArgumentError,
    NotFoundError,
    ProviderJobProgress,
    RunEvent,
    RunStatus,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    WatchRetry,
    connect,
)
from nex.collector.v1 import (
    dataset_pb2,
    dataset_service_pb2,
    dataset_service_pb2_grpc,
    teacher_pb2,
    teacher_service_pb2,
    teacher_service_pb2_grpc,
)

TOKEN = "s3cret"
FAST = WatchRetry(initial_backoff=0.01, max_backoff=0.05, jitter=0.0, give_up_after=5.0)


def _status_md(code: grpc.StatusCode, message: str, *details: Any) -> tuple[tuple[str, bytes]]:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return (("grpc-status-details-bin", status.SerializeToString()),)


class FakeTeacher(teacher_service_pb2_grpc.TeacherServiceServicer):
    def __init__(self) -> None:
        self.events = [
            teacher_pb2.RunEvent(
                revision=i,
                run_id=f"r{(i - 1) // 3}",
                batch_id="b1",
                status=teacher_pb2.RunStatus.ValueType((i - 1) % 3 + 1),
            )
            for i in range(1, 10)
        ]  # 3 runs: QUEUED, RUNNING, COMPLETED each; revisions 1..9
        self.watch_requests: list[teacher_service_pb2.WatchRunsRequest] = []
        self.fail_after: list[int] = []  # per watch call: abort after n events
        self.replay_overlap = 0  # resend this many already-seen events on reconnect
        self.seen_tokens: list[str | None] = []
        self.stall_after: list[int] = []  # per watch call: go silent after n events
        # Sent by every watch call after its first heartbeat.
        self.extra: list[teacher_service_pb2.WatchRunsResponse] = []

    def _auth(self, context: aio.ServicerContext[Any, Any]) -> str | None:
        md = dict(context.invocation_metadata() or ())
        value = md.get("authorization")
        token = value if isinstance(value, str) else None
        self.seen_tokens.append(token)
        return token

    async def GetBatch(
        self, request: teacher_service_pb2.GetBatchRequest, context: Any
    ) -> teacher_service_pb2.GetBatchResponse:
        if self._auth(context) != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        if request.id != "b1":
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"batch {request.id} not found",
                trailing_metadata=_status_md(
                    grpc.StatusCode.NOT_FOUND,
                    f"batch {request.id} not found",
                    error_details_pb2.ErrorInfo(reason="BATCH_NOT_FOUND", domain="collector.nex"),
                ),
            )
        return teacher_service_pb2.GetBatchResponse(
            batch=teacher_pb2.TeacherBatch(
                id="b1", name="demo", status=teacher_pb2.BATCH_STATUS_RUNNING
            )
        )

    async def BatchCreateRuns(
        self, request: teacher_service_pb2.BatchCreateRunsRequest, context: Any
    ) -> teacher_service_pb2.BatchCreateRunsResponse:
        for i, run in enumerate(request.runs):
            if "topic" not in run.variables:
                field = f"runs[{i}].variables"
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{field}: missing 'topic'",
                    trailing_metadata=_status_md(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"{field}: missing 'topic'",
                        error_details_pb2.ErrorInfo(reason="MISSING_VARIABLE"),
                        error_details_pb2.BadRequest(
                            field_violations=[
                                error_details_pb2.BadRequest.FieldViolation(
                                    field=field, description="missing 'topic'"
                                )
                            ]
                        ),
                    ),
                )
        return teacher_service_pb2.BatchCreateRunsResponse(
            runs=[
                teacher_pb2.TeacherRun(
                    id=f"r{i}",
                    batch_id=request.batch_id,
                    status=teacher_pb2.RUN_STATUS_QUEUED,
                    variables=r.variables,
                    request_id=r.request_id,
                )
                for i, r in enumerate(request.runs)
            ]
        )

    async def ListBatches(
        self, request: teacher_service_pb2.ListBatchesRequest, context: Any
    ) -> teacher_service_pb2.ListBatchesResponse:
        start = int(request.page_token or "0")
        size = request.page_size or 2
        ids = [f"b{i}" for i in range(start, min(start + size, 5))]
        nxt = str(start + size) if start + size < 5 else ""
        return teacher_service_pb2.ListBatchesResponse(
            batches=[teacher_pb2.TeacherBatch(id=i) for i in ids], next_page_token=nxt
        )

    async def WatchRuns(
        self, request: teacher_service_pb2.WatchRunsRequest, context: Any
    ) -> AsyncIterator[teacher_service_pb2.WatchRunsResponse]:
        self.watch_requests.append(request)
        if self._auth(context) != f"Bearer {TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        fail_after = self.fail_after.pop(0) if self.fail_after else None
        stall_after = self.stall_after.pop(0) if self.stall_after else None
        start = max(0, request.after_revision - self.replay_overlap)
        sent = 0
        yield teacher_service_pb2.WatchRunsResponse(heartbeat=teacher_service_pb2.Heartbeat())
        for extra in self.extra:
            yield extra
        for ev in self.events:
            if ev.revision <= start:
                continue
            if request.run_id and ev.run_id != request.run_id:
                continue
            if fail_after is not None and sent >= fail_after:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "server draining")
            if stall_after is not None and sent >= stall_after:
                await asyncio.sleep(3600)  # a half-open connection: no data, no error
            yield teacher_service_pb2.WatchRunsResponse(event=ev)
            sent += 1


def new_fake() -> FakeTeacher:
    # The servicer's other RPCs keep the generated UNIMPLEMENTED bodies.
    return FakeTeacher()  # type: ignore[abstract]  # mypy-protobuf marks every RPC abstract


@asynccontextmanager
async def serve(fake: FakeTeacher, port: int = 0) -> AsyncIterator[tuple[aio.Server, int]]:
    server = aio.server()
    teacher_service_pb2_grpc.add_TeacherServiceServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield server, bound
    finally:
        await server.stop(None)


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[FakeTeacher, int]]:
    fake = new_fake()
    async with serve(fake) as (_, port):
        yield fake, port


async def _client(port: int, **kw: Any) -> AsyncClient:
    return await AsyncClient.connect(f"127.0.0.1:{port}", TOKEN, timeout=5, **kw)


async def test_token_is_sent_and_errors_carry_details(fake_server: tuple[FakeTeacher, int]) -> None:
    fake, port = fake_server
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        batch = await client.get_batch("b1")
        assert batch.id == "b1" and batch.name == "demo"
        with pytest.raises(NotFoundError) as info:
            await client.get_batch("nope")
        assert info.value.reason == "BATCH_NOT_FOUND"
        assert info.value.domain == "collector.nex"
        with pytest.raises(UnimplementedError):
            await client.get_run("r1")
    assert fake.seen_tokens[0] == f"Bearer {TOKEN}"

    async with AsyncClient.connect(f"127.0.0.1:{port}", "wrong", watch_retry=FAST) as bad:
        with pytest.raises(UnauthenticatedError):
            await bad.get_batch("b1")
        with pytest.raises(UnauthenticatedError):  # not retried: it is no outage
            await _revisions(bad.watch_batch("b1"))
    async with AsyncClient.connect(f"127.0.0.1:{port}") as anonymous:
        with pytest.raises(UnauthenticatedError):
            await anonymous.get_batch("b1")
    assert fake.seen_tokens[-1] is None


async def test_field_violations_over_the_wire(fake_server: tuple[FakeTeacher, int]) -> None:
    _, port = fake_server
    client = await _client(port)
    try:
        with pytest.raises(InvalidArgumentError) as info:
            await client.create_runs("b1", [{"topic": "a"}, {"other": "b"}])
        assert info.value.reason == "MISSING_VARIABLE"
        assert [v.field for v in info.value.field_violations] == ["runs[1].variables"]
        runs = await client.create_runs("b1", [{"topic": "a"}, {"topic": "b"}])
        assert [r.variables["topic"] for r in runs] == ["a", "b"]
        assert runs[0].status is RunStatus.QUEUED
    finally:
        await client.close()


async def test_list_follows_page_tokens(fake_server: tuple[FakeTeacher, int]) -> None:
    _, port = fake_server
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        assert [b.id async for b in client.list_batches()] == [f"b{i}" for i in range(5)]
        assert [b.id async for b in client.list_batches(page_size=3)] == [f"b{i}" for i in range(5)]


async def test_connect_fails_fast_when_nothing_listens() -> None:
    with pytest.raises(UnavailableError):
        await AsyncClient.connect("127.0.0.1:1", TOKEN, timeout=0.5)
    lazy = await AsyncClient.connect("127.0.0.1:1", TOKEN, timeout=0.5, lazy=True)
    with pytest.raises(UnavailableError):
        await lazy.get_batch("b1")
    await lazy.close()


async def _revisions(it: AsyncIterator[RunEvent]) -> list[int]:
    return [e.revision async for e in it]


async def test_watch_batch_resumes_after_unavailable(fake_server: tuple[FakeTeacher, int]) -> None:
    fake, port = fake_server
    fake.fail_after = [2, 0, 3]
    fake.replay_overlap = 1  # the server resends an event the client has seen
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN, watch_retry=FAST) as client:
        assert await _revisions(client.watch_batch("b1")) == list(range(1, 10))
    assert [r.after_revision for r in fake.watch_requests] == [0, 2, 2, 4]
    assert all(r.batch_id == "b1" for r in fake.watch_requests)


async def test_watch_reopens_a_silent_stream(fake_server: tuple[FakeTeacher, int]) -> None:
    fake, port = fake_server
    fake.stall_after = [4]
    retry = WatchRetry(initial_backoff=0.01, jitter=0.0, idle_timeout=0.3)
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN, watch_retry=retry) as client:
        assert await _revisions(client.watch_batch("b1")) == list(range(1, 10))
    assert [r.after_revision for r in fake.watch_requests] == [0, 4]


async def test_watch_batch_passes_job_progress_on_and_skips_kinds_it_does_not_know(
    fake_server: tuple[FakeTeacher, int],
) -> None:
    fake, port = fake_server
    fake.extra = [
        teacher_service_pb2.WatchRunsResponse(
            provider_job=teacher_service_pb2.ProviderJobProgress(
                batch_id="b1",
                job=teacher_pb2.ProviderJob(
                    id="pjb_1", state="in_progress", request_total=5000, request_completed=1200
                ),
            )
        ),
        # A kind of a newer server (field 100 of the oneof): unknown here.
        teacher_service_pb2.WatchRunsResponse.FromString(b"\xa2\x06\x00"),
    ]
    seen: list[ProviderJobProgress] = []
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        assert await _revisions(client.watch_batch("b1")) == list(range(1, 10))
        watch = client.watch_batch("b1", on_provider_job=seen.append)
        assert await _revisions(watch) == list(range(1, 10))
    (progress,) = seen
    assert progress.job.id == "pjb_1" and progress.describe() == "in_progress 1200/5000"
    assert progress.update_time is None and progress.job.provider_job_id is None


async def test_watch_batch_from_a_revision(fake_server: tuple[FakeTeacher, int]) -> None:
    _, port = fake_server
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        assert await _revisions(client.watch_batch("b1", after_revision=6)) == [7, 8, 9]


async def test_watch_runs_without_reconnect_raises(fake_server: tuple[FakeTeacher, int]) -> None:
    fake, port = fake_server
    fake.fail_after = [2]
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        seen: list[int] = []
        with pytest.raises(UnavailableError):
            async for ev in client.watch_runs(batch_id="b1"):
                seen.append(ev.revision)
        assert seen == [1, 2]
        with pytest.raises(ValueError):
            client.watch_runs(batch_id="b1", run_id="r0")


async def test_watch_run_stops_at_terminal_event(fake_server: tuple[FakeTeacher, int]) -> None:
    fake, port = fake_server
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
        events = [e async for e in client.watch_run("r1")]
    assert [e.status for e in events] == [RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED]
    assert fake.watch_requests[0].run_id == "r1"


async def test_watch_gives_up_after_the_configured_time() -> None:
    retry = WatchRetry(initial_backoff=0.01, max_backoff=0.05, jitter=0.0, give_up_after=0.5)
    client = await AsyncClient.connect("127.0.0.1:1", TOKEN, lazy=True, watch_retry=retry)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(UnavailableError):
            await _revisions(client.watch_batch("b1"))
        assert 0.4 <= loop.time() - started < 3.0
    finally:
        await client.close()


async def test_watch_survives_a_server_restart() -> None:
    fake = new_fake()
    retry = WatchRetry(initial_backoff=0.05, max_backoff=0.2, jitter=0.0, give_up_after=10.0)
    seen: list[int] = []
    async with serve(fake) as (server, port):
        client = await _client(port, watch_retry=retry)
        # A followed watch stays open after the replay; the restart cuts it.
        watch = client.watch_batch("b1", follow=True)
        for _ in range(9):
            seen.append((await anext(watch)).revision)
        nxt = asyncio.ensure_future(anext(watch))
        await asyncio.sleep(0.2)
        await server.stop(None)
    fake.events.append(
        teacher_pb2.RunEvent(
            revision=10, run_id="r3", batch_id="b1", status=teacher_pb2.RUN_STATUS_QUEUED
        )
    )
    await asyncio.sleep(0.3)
    async with serve(fake, port):
        seen.append((await asyncio.wait_for(nxt, 10)).revision)
        assert isinstance(watch, AsyncGenerator)
        await watch.aclose()
        await client.close()
    assert seen == list(range(1, 11))
    assert fake.watch_requests[-1].after_revision == 9


def test_sync_client_in_a_thread_while_a_loop_runs() -> None:
    # This test is sync: the session loop is not running here, so run a loop
    # of our own in this thread and call the sync client from another thread.
    fake = new_fake()
    results: dict[str, Any] = {}
    before = set(threading.enumerate())

    async def main() -> None:
        async with serve(fake) as (_, port):

            def use_sync() -> None:
                with connect(f"127.0.0.1:{port}", TOKEN, watch_retry=FAST) as client:
                    results["batch"] = client.get_batch("b1").name
                    results["ids"] = [b.id for b in client.list_batches()]
                    results["revs"] = [e.revision for e in client.watch_batch("b1")]
                    with pytest.raises(NotFoundError):
                        client.get_batch("zzz")
                    it: Iterator[RunEvent] = client.watch_batch("b1")
                    results["first"] = next(it).revision
                    assert isinstance(it, Generator)
                    it.close()

            await asyncio.to_thread(use_sync)

    asyncio.run(main())
    assert results == {
        "batch": "demo",
        "ids": [f"b{i}" for i in range(5)],
        "revs": list(range(1, 10)),
        "first": 1,
    }
    # Closing the client stops its private loop thread (other tests' threads
    # may still be alive, so look only for ours).
    assert [t.name for t in threading.enumerate() if t not in before] == []


def test_sync_client_from_plain_code() -> None:
    fake = new_fake()
    ready = threading.Event()
    stop = threading.Event()
    port_box: list[int] = []

    def run_server() -> None:
        async def main() -> None:
            async with serve(fake) as (_, port):
                port_box.append(port)
                ready.set()
                await asyncio.to_thread(stop.wait)

        asyncio.run(main())

    t = threading.Thread(target=run_server, daemon=True)
    t.start()
    try:
        assert ready.wait(5)
        client = connect(f"127.0.0.1:{port_box[0]}", TOKEN)
        assert client.get_batch("b1").id == "b1"
        assert len(list(client.watch_run("r2"))) == 3
        client.close()
        client.close()  # idempotent
        with pytest.raises(RuntimeError):
            client.get_batch("b1")
    finally:
        stop.set()
        t.join()


async def test_progress_display(fake_server: tuple[FakeTeacher, int]) -> None:
    from rich.console import Console

    from nex.collector.client.progress import watch_batch_progress

    fake, port = fake_server
    fake.fail_after = [4]  # the display survives a reconnect too
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN, watch_retry=FAST) as client:
        batch = await watch_batch_progress(client, "b1", console, refresh_interval=0.05)
    assert batch.id == "b1"
    text = out.getvalue()
    assert "completed 3" in text and "3/3" in text, text


class FakeDatasets(dataset_service_pb2_grpc.DatasetServiceServicer):
    def __init__(self) -> None:
        self.polls: dict[str, int] = {}

    async def GetDataset(
        self, request: dataset_service_pb2.GetDatasetRequest, context: Any
    ) -> dataset_service_pb2.GetDatasetResponse:
        n = self.polls[request.id] = self.polls.get(request.id, 0) + 1
        ds = dataset_pb2.DatasetManifest(
            id=request.id, name="n", version="1", status=dataset_pb2.DATASET_STATUS_BUILDING
        )
        if n >= 3 and request.id == "ok":
            ds.status = dataset_pb2.DATASET_STATUS_READY
        elif n >= 3 and request.id == "bad":
            ds.status = dataset_pb2.DATASET_STATUS_FAILED
            ds.error.code, ds.error.message = "NO_RUNS", "no completed runs"
        return dataset_service_pb2.GetDatasetResponse(dataset=ds)


async def test_wait_dataset() -> None:
    server = aio.server()
    fake = FakeDatasets()  # type: ignore[abstract]  # mypy-protobuf marks every RPC abstract
    dataset_service_pb2_grpc.add_DatasetServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncClient.connect(f"127.0.0.1:{port}", TOKEN) as client:
            ready = await client.wait_dataset("ok", poll_interval=0.01)
            assert ready.status is DatasetStatus.READY and fake.polls["ok"] == 3
            with pytest.raises(DatasetBuildError) as info:
                await client.wait_dataset("bad", poll_interval=0.01)
            assert info.value.reason == "NO_RUNS"
            assert info.value.dataset.status is DatasetStatus.FAILED
            fake.polls.clear()
            failed = await client.wait_dataset("bad", poll_interval=0.01, raise_on_failure=False)
            assert failed.error is not None and failed.error.code == "NO_RUNS"
            with pytest.raises(TimeoutError):
                await client.wait_dataset("never", timeout=0.1, poll_interval=0.01)
    finally:
        await server.stop(None)
