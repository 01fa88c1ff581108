from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from nex.collector.server.api import convert
from nex.collector.server.api.types import Context
from nex.collector.server.domain.errors import InvalidArgument
from nex.collector.server.domain.limits import MAX_DEADLINE_S
from nex.collector.server.services.teacher import NewBatch, NewRun, Teacher
from nex.collector.server.services.teachers import TeacherEndpoints
from nex.collector.server.services.watch import Heartbeat, JobEntry, JobProgress, RunWatcher
from nex.collector.v1 import teacher_pb2
from nex.collector.v1 import teacher_service_pb2 as pb
from nex.collector.v1 import teacher_service_pb2_grpc as pb_grpc

# Most events, and most bytes of them, in one WatchRunsResponse (well within
# the 4 MiB every gRPC client accepts by default).
MAX_EVENTS_PER_MESSAGE = 1000
MAX_EVENTS_BYTES = 1024 * 1024


def _job_message(entry: JobEntry) -> bytes:
    """A provider job's progress, encoded once and shared like an event's."""
    if entry.wire is None:
        entry.wire = pb.WatchRunsResponse(
            provider_job=pb.ProviderJobProgress(
                batch_id=entry.batch_id,
                job=convert.provider_job(entry.job),
                update_time=convert.timestamp(entry.job.update_time),
            )
        ).SerializeToString()
    return entry.wire


def _events_message(fields: list[bytes]) -> bytes:
    """One event alone as `event` (the shape every client knows), more as `events`."""
    return fields[0] if len(fields) == 1 else convert.events_response(fields)


def _full(view: int, default: bool) -> bool:
    if view == teacher_pb2.RUN_VIEW_UNSPECIFIED:
        return default
    if view not in (teacher_pb2.RUN_VIEW_BASIC, teacher_pb2.RUN_VIEW_FULL):
        raise InvalidArgument.one("view", f"unknown view {view}")
    return view == teacher_pb2.RUN_VIEW_FULL


class TeacherServicer(pb_grpc.TeacherServiceServicer):
    """TeacherService over the Teacher use cases, the run watcher and the
    configured teacher endpoints."""

    def __init__(
        self, teacher: Teacher, watcher: RunWatcher, endpoints: TeacherEndpoints | None = None
    ) -> None:
        self._teacher = teacher
        self._watcher = watcher
        self._endpoints = endpoints

    async def CreateBatch(
        self, request: pb.CreateBatchRequest, context: Context
    ) -> pb.CreateBatchResponse:
        """Creates an empty batch (idempotent by request id), with its cost cap,
        execution mode and deadline."""
        view = await self._teacher.create_batch(
            NewBatch(
                name=request.name,
                template_id=request.template_id,
                provider=request.provider,
                model=request.model,
                params=convert.params_from_pb(request.params),
                context_ref_id=request.context_ref_id,
                labels=dict(request.labels),
                request_id=request.request_id,
                link_evidence=request.link_evidence,
                max_cost_usd=request.max_cost_usd if request.HasField("max_cost_usd") else None,
                execution_mode=convert.execution_mode_from_pb(request.execution_mode),
                deadline_time=_deadline_time(request),
                deadline_after=_deadline_after(request),
            )
        )
        return pb.CreateBatchResponse(batch=convert.batch(view))

    async def UpdateBatch(
        self, request: pb.UpdateBatchRequest, context: Context
    ) -> pb.UpdateBatchResponse:
        """Changes the masked fields (only max_cost_usd); raising the cap of a
        batch paused by its budget resumes it."""
        b = request.batch
        view = await self._teacher.update_batch(
            b.id,
            list(request.update_mask.paths),
            max_cost_usd=b.max_cost_usd if b.HasField("max_cost_usd") else None,
        )
        return pb.UpdateBatchResponse(batch=convert.batch(view))

    async def EstimateBatch(
        self, request: pb.EstimateBatchRequest, context: Context
    ) -> pb.EstimateBatchResponse:
        """The worst-case cost of a would-be batch: renders each input, creates
        nothing and calls no teacher."""
        estimate = await self._teacher.estimate_batch(
            template_id=request.template_id,
            provider=request.provider,
            model=request.model,
            params=convert.params_from_pb(request.params),
            inputs=[NewRun(dict(r.variables), r.request_id) for r in request.runs],
        )
        return pb.EstimateBatchResponse(estimate=convert.cost_estimate(estimate))

    async def GetBatch(self, request: pb.GetBatchRequest, context: Context) -> pb.GetBatchResponse:
        """One batch with its counts, usage and budget."""
        return pb.GetBatchResponse(batch=convert.batch(await self._teacher.get_batch(request.id)))

    async def ListBatches(
        self, request: pb.ListBatchesRequest, context: Context
    ) -> pb.ListBatchesResponse:
        """A page of batches with their counts, usage and budgets."""
        views, token = await self._teacher.list_batches(
            page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListBatchesResponse(
            batches=[convert.batch(v) for v in views], next_page_token=token
        )

    async def CancelBatch(
        self, request: pb.CancelBatchRequest, context: Context
    ) -> pb.CancelBatchResponse:
        """Cancels the batch's queued runs and stops its further teacher calls."""
        return pb.CancelBatchResponse(
            batch=convert.batch(await self._teacher.cancel_batch(request.id))
        )

    async def CreateRun(
        self, request: pb.CreateRunRequest, context: Context
    ) -> pb.CreateRunResponse:
        """Renders the batch's template with the variables and queues one run."""
        runs = await self._teacher.create_runs(
            request.batch_id, [NewRun(dict(request.variables), request.request_id)], single=True
        )
        return pb.CreateRunResponse(run=convert.run(runs[0]))

    async def BatchCreateRuns(
        self, request: pb.BatchCreateRunsRequest, context: Context
    ) -> pb.BatchCreateRunsResponse:
        """Queues many runs at once; one bad input rejects the call and creates
        nothing."""
        runs = await self._teacher.create_runs(
            request.batch_id, [NewRun(dict(r.variables), r.request_id) for r in request.runs]
        )
        return pb.BatchCreateRunsResponse(runs=[convert.run_created(r) for r in runs])

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        """One run, in the full view unless the request asks for the basic one."""
        run = await self._teacher.get_run(request.id, full=_full(request.view, True))
        return pb.GetRunResponse(run=convert.run(run))

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        """A page of a batch's runs, of one status when set; basic view unless
        asked for full (pages also end by size, see list_page)."""
        runs, token = await self._teacher.list_runs(
            batch_id=request.batch_id,
            status=convert.run_status_from_pb(request.status),
            page_size=request.page_size,
            page_token=request.page_token,
            full=_full(request.view, False),
        )
        return pb.ListRunsResponse(runs=[convert.run(r) for r in runs], next_page_token=token)

    async def WatchRuns(  # type: ignore[override]  # also yields encoded messages
        self, request: pb.WatchRunsRequest, context: Context
    ) -> AsyncIterator[pb.WatchRunsResponse | bytes]:
        # Messages go out already encoded (bytes): each event is encoded once per
        # server process and the encoding shared by every watcher it reaches.
        """Replays the events after after_revision, then follows live ones, with
        heartbeats and provider job progress between them."""
        async for item in self._watcher.watch(
            batch_id=request.batch_id,
            run_id=request.run_id,
            after_revision=request.after_revision,
            follow=request.follow,
            max_events=min(request.max_events_per_message, MAX_EVENTS_PER_MESSAGE),
        ):
            if isinstance(item, Heartbeat):
                now = Timestamp()
                now.GetCurrentTime()
                yield pb.WatchRunsResponse(heartbeat=pb.Heartbeat(time=now))
                continue
            if isinstance(item, JobProgress):
                for job in item.jobs:
                    yield _job_message(job)
                continue
            fields: list[bytes] = []
            size = 0
            for entry in item:
                wire = entry.wire
                if wire is None:
                    wire = entry.wire = convert.run_event_field(entry.event)
                if size + len(wire) > MAX_EVENTS_BYTES and fields:
                    yield _events_message(fields)
                    fields, size = [], 0
                fields.append(wire)
                size += len(wire)
            yield _events_message(fields)

    async def SetRunScores(
        self, request: pb.SetRunScoresRequest, context: Context
    ) -> pb.SetRunScoresResponse:
        """Attaches named scores (e.g. a judge's) to a completed run."""
        run = await self._teacher.set_run_scores(request.run_id, dict(request.scores))
        return pb.SetRunScoresResponse(run=convert.run(run))

    async def ListTeachers(
        self, request: pb.ListTeachersRequest, context: Context
    ) -> pb.ListTeachersResponse:
        """The teacher endpoints a batch may name, with their live usage (none
        when no teachers are configured)."""
        views = await self._endpoints.list_teachers() if self._endpoints else []
        return pb.ListTeachersResponse(teachers=[convert.teacher_endpoint(v) for v in views])


def _deadline_time(request: pb.CreateBatchRequest) -> datetime | None:
    if not request.HasField("deadline_time"):
        return None
    try:
        return request.deadline_time.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.one("deadline_time", "is not a valid time") from None


def _deadline_after(request: pb.CreateBatchRequest) -> timedelta | None:
    if not request.HasField("deadline_after"):
        return None
    d = request.deadline_after
    if not 0 < d.seconds <= MAX_DEADLINE_S or not 0 <= d.nanos < 1_000_000_000:
        raise InvalidArgument.one(
            "deadline_after", f"must be positive and at most {MAX_DEADLINE_S // 86400} days"
        )
    return d.ToTimedelta()
