"""Many watchers of one batch: each server process reads the new events once and
fans them out; a watcher that is behind gets many events per message; one that
falls too far behind is cut off with ABORTED and resumes by revision; clients
that know only single events still get them one by one."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from nex.collector.client import (
    AsyncClient,
    CollectorError,
    GenerationParams,
    RunEvent,
    RunStatus,
)
from nex.collector.server.testing import CollectorEnvironment
from nex.collector.v1 import teacher_service_pb2 as pb
from nex.collector.v1 import teacher_service_pb2_grpc as pb_grpc
from tests.conftest import teacher_settings, unique
from tests.fakes.teacher_api import FakeTeacherAPI
from tests.support.backing import Backing
from tests.support.collector import collector_settings

LEAK = "Task was destroyed but it is pending"


async def _new_batch(client: AsyncClient, provider: str = "mock") -> str:
    template = await client.create_template(unique("fan"), user_template="{{ x }}", variables=["x"])
    model = "mock-1" if provider == "mock" else "gpt-4o-mini"
    batch = await client.create_batch(
        unique("fan"), template.id, provider, model, params=GenerationParams(max_tokens=4)
    )
    return batch.id


async def _until_completed(stream: AsyncIterator[RunEvent], runs: int) -> list[RunEvent]:
    seen: list[RunEvent] = []
    completed = 0
    async for event in stream:
        seen.append(event)
        if event.status == RunStatus.COMPLETED:
            completed += 1
            if completed == runs:
                break
    return seen


async def _first(stream: AsyncIterator[RunEvent]) -> RunEvent:
    gen = cast(AsyncGenerator[RunEvent, None], stream)
    try:
        return await gen.__anext__()
    finally:
        await gen.aclose()


def _assert_once_in_order(seen: list[RunEvent], log: list[RunEvent]) -> None:
    assert [e.revision for e in seen] == [e.revision for e in log]
    assert seen == log


@contextlib.contextmanager
def _loop_errors(collector: CollectorEnvironment) -> Iterator[list[dict[str, Any]]]:
    """What the collector's event loop reports to its exception handler."""
    errors: list[dict[str, Any]] = []
    loop = collector.loop
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors.append(context)
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    collector.call(_set_handler(loop, handler))
    try:
        yield errors
    finally:
        collector.call(_set_handler(loop, previous))


async def _set_handler(loop: asyncio.AbstractEventLoop, handler: Any) -> None:
    loop.set_exception_handler(handler)


async def _collect_garbage() -> None:
    gc.collect()
    await asyncio.sleep(0.1)


async def test_every_watcher_of_a_batch_gets_every_event_once_in_order(
    collector: CollectorEnvironment,
) -> None:
    runs, watchers = 40, 25
    async with AsyncClient.connect(collector.address, token=collector.token) as client:
        batch_id = await _new_batch(client)
        streams = [client.watch_batch(batch_id, follow=True) for _ in range(watchers)]
        live = [asyncio.create_task(_until_completed(s, runs)) for s in streams]
        await client.create_run(batch_id, {"x": "0"})
        first = await _first(client.watch_batch(batch_id))  # the first event is stored
        # Some join while the batch runs, from the start or from the first event
        # (following: the first run may be done before the others are created).
        late = [
            asyncio.create_task(
                _until_completed(
                    client.watch_batch(batch_id, after_revision=after, follow=True), runs
                )
            )
            for after in (0, first.revision)
        ]
        await client.create_runs(batch_id, [{"x": str(i)} for i in range(1, runs)])
        results = await asyncio.gather(*live, *late)
        log = [e async for e in client.watch_batch(batch_id)]  # replayed from the table
    assert len(log) == 3 * runs
    for seen in results[:watchers]:
        _assert_once_in_order(seen, log)
    _assert_once_in_order(results[-2], log)
    _assert_once_in_order(results[-1], log[1:])


async def test_a_client_that_knows_only_single_events_gets_them_one_by_one(
    collector: CollectorEnvironment,
) -> None:
    async with AsyncClient.connect(collector.address, token=collector.token) as client:
        batch_id = await _new_batch(client)
        await client.create_runs(batch_id, [{"x": str(i)} for i in range(20)])
        log = [e async for e in client.watch_batch(batch_id)]
    metadata = (("authorization", f"Bearer {collector.token}"),)
    async with grpc.aio.insecure_channel(collector.address) as channel:
        stub = pb_grpc.TeacherServiceStub(channel)
        old = [
            m
            async for m in stub.WatchRuns(pb.WatchRunsRequest(batch_id=batch_id), metadata=metadata)
        ]
        new = [
            m
            async for m in stub.WatchRuns(
                pb.WatchRunsRequest(batch_id=batch_id, max_events_per_message=50),
                metadata=metadata,
            )
        ]
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            async for _ in stub.WatchRuns(
                pb.WatchRunsRequest(batch_id=batch_id, max_events_per_message=-1),
                metadata=metadata,
            ):
                pass
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_events_per_message" in (bad.value.details() or "")
    assert {m.WhichOneof("kind") for m in old} == {"event"}
    assert [m.event.revision for m in old] == [e.revision for e in log]
    # A client that asks gets the same events in fewer messages.
    assert {m.WhichOneof("kind") for m in new} == {"events"}
    assert [len(m.events.events) for m in new] == [50, 10]
    assert [e.revision for m in new for e in m.events.events] == [e.revision for e in log]


@pytest.fixture
def small_buffer(
    own_backing: Backing, fresh_teacher_api: FakeTeacherAPI, tmp_path: Path
) -> Iterator[CollectorEnvironment]:
    """A collector whose processes keep only the last 100 live events per batch."""
    settings = collector_settings(
        own_backing, tmp_path, WATCH_BUFFER_EVENTS=100, **teacher_settings(fresh_teacher_api)
    )
    with CollectorEnvironment(settings) as running:
        yield running


async def test_a_slow_watcher_is_cut_off_and_resumes_while_the_others_keep_up(
    small_buffer: CollectorEnvironment,
) -> None:
    collector = small_buffer
    runs = 300
    # The slow reader's connection takes little data ahead of what it reads, so
    # the server's writes to it wait while it does not read.
    tight = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    async with (
        AsyncClient.connect(collector.address, token=collector.token) as client,
        AsyncClient.connect(collector.address, token=collector.token, options=tight) as slow,
    ):
        batch_id = await _new_batch(client, "openai")
        await client.create_run(batch_id, {"x": "0"})
        slow_stream = slow.watch_runs(batch_id=batch_id, follow=True)  # no reconnect
        slow_seen = [await slow_stream.__anext__()]
        fast = asyncio.create_task(_until_completed(client.watch_batch(batch_id), runs))
        await client.create_runs(batch_id, [{"x": str(i)} for i in range(1, runs)])
        fast_seen = await fast  # the others get everything, whatever the slow one does
        with pytest.raises(CollectorError) as cut:
            async for event in slow_stream:  # it reads again, far too late
                slow_seen.append(event)
        err = cut.value
        assert err.code == grpc.StatusCode.ABORTED
        assert err.reason == "WATCH_TOO_SLOW"
        last = slow_seen[-1].revision
        assert err.metadata["resume_after_revision"] == str(last)
        assert f"resume it after revision {last}" in err.message
        assert err.retry_delay is not None
        resumed = await _until_completed(
            slow.watch_batch(batch_id, after_revision=last),
            runs - sum(e.status == RunStatus.COMPLETED for e in slow_seen),
        )
        log = [e async for e in client.watch_batch(batch_id)]
    _assert_once_in_order(fast_seen, log)
    _assert_once_in_order(slow_seen + resumed, log)


async def test_closing_watches_leaves_no_pending_task(
    collector: CollectorEnvironment, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncClient.connect(collector.address, token=collector.token) as client:
        batch_id = await _new_batch(client)
        await client.create_runs(batch_id, [{"x": str(i)} for i in range(30)])
        with caplog.at_level("ERROR", logger="asyncio"), _loop_errors(collector) as errors:
            for _ in range(2):
                # Waiting for events, reading the live stream, or replaying.
                waiting = [
                    asyncio.create_task(_drain(client.watch_batch(batch_id, follow=True)))
                    for _ in range(10)
                ]
                first = await _first(client.watch_batch(batch_id))
                replaying = cast(
                    AsyncGenerator[RunEvent, None],
                    client.watch_batch(batch_id, after_revision=first.revision),
                )
                await replaying.__anext__()
                await client.create_runs(batch_id, [{"x": str(i)} for i in range(5)])
                for task in waiting:
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
                await replaying.aclose()
            # The server sees the cancellations; once its watchers are gone, no
            # task of theirs is left behind.
            for _ in range(50):
                if not collector.container.watcher._feeds:
                    break
                await asyncio.sleep(0.1)
            collector.call(_collect_garbage())
            gc.collect()
    assert not collector.container.watcher._feeds
    assert not [e for e in errors if LEAK in str(e.get("message", ""))]
    assert LEAK not in caplog.text


async def _drain(stream: AsyncIterator[RunEvent]) -> None:
    async for _ in stream:
        pass
