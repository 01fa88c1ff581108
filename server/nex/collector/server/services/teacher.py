"""Use cases of TeacherService: batches, runs, scores (the watch is in watch.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.batches import (
    MAX_RUNS_PER_CALL,
    Batch,
    BatchView,
    Run,
    check_params,
    check_provider,
    check_scores,
)
from nex.collector.server.domain.errors import FailedPrecondition, InvalidArgument, Violations
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.teacher import GenerationParams, RunStatus
from nex.collector.server.domain.teachers import TeacherDirectory
from nex.collector.server.domain.templates import check_variables, render
from nex.collector.server.domain.validation import check_labels, check_request_id, check_required
from nex.collector.server.ids import new_id, new_ids
from nex.collector.server.queue import EXECUTE_RUN, JobQueue
from nex.collector.server.services.common import (
    check_id,
    integration_disabled,
    list_page,
    now,
    require,
)


@dataclass(frozen=True, slots=True)
class NewBatch:
    name: str
    template_id: str
    provider: str
    model: str
    params: GenerationParams
    context_ref_id: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    request_id: str = ""
    link_evidence: bool = False


@dataclass(frozen=True, slots=True)
class NewRun:
    variables: Mapping[str, str]
    request_id: str = ""


class Teacher:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        *,
        provider_ready: Mapping[str, str | None] | None = None,
        teachers: TeacherDirectory | None = None,
        integrated: bool = False,
    ) -> None:
        self._uow = uow
        self._queue = queue
        self._integrated = integrated
        self._teachers = teachers
        # provider -> why it cannot be used here (None: usable)
        self._provider_problem = dict(provider_ready or {})
        if teachers is not None:
            self._provider_problem.update({t.name: t.problem for t in teachers})

    # -- batches -----------------------------------------------------------------

    async def create_batch(self, cmd: NewBatch) -> BatchView:
        v = Violations()
        check_required(v, "name", cmd.name)
        check_id(v, "template_id", cmd.template_id)
        if self._teachers is not None:
            self._teachers.check(v, "provider", cmd.provider, cmd.params.top_logprobs)
        else:
            check_provider(v, "provider", cmd.provider)
        check_required(v, "model", cmd.model)
        check_params(v, "params", cmd.params)
        check_labels(v, "labels", cmd.labels)
        check_request_id(v, "request_id", cmd.request_id)
        if cmd.link_evidence and not cmd.context_ref_id:
            v.add("link_evidence", "needs context_ref_id")
        v.raise_if_any()
        if cmd.link_evidence and not self._integrated:
            raise integration_disabled("evidence links (link_evidence)")
        if problem := self._provider_problem.get(cmd.provider):
            raise FailedPrecondition(
                problem, reason="PROVIDER_NOT_CONFIGURED", metadata={"provider": cmd.provider}
            )
        async with self._uow() as tx:
            if cmd.request_id and (found := await tx.batches.get_by_request_id(cmd.request_id)):
                return await tx.batches.view(found)
            require(await tx.templates.get(cmd.template_id), "template", cmd.template_id)
            if cmd.context_ref_id:
                require(
                    await tx.context_refs.get(cmd.context_ref_id), "context_ref", cmd.context_ref_id
                )
            batch = Batch(
                id=new_id("bat"),
                name=cmd.name,
                template_id=cmd.template_id,
                provider=cmd.provider,
                model=cmd.model,
                params=cmd.params,
                context_ref_id=cmd.context_ref_id or None,
                labels=dict(cmd.labels),
                link_evidence=cmd.link_evidence,
                create_time=now(),
            )
            if not await tx.batches.insert(batch, cmd.request_id):
                await tx.rollback()
                winner = require(
                    await tx.batches.get_by_request_id(cmd.request_id), "batch", cmd.request_id
                )
                return await tx.batches.view(winner)
            await tx.commit()
            return await tx.batches.view(batch)

    async def get_batch(self, id_: str) -> BatchView:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return await tx.batches.view(require(await tx.batches.get(id_), "batch", id_))

    async def list_batches(
        self, *, page_size: int, page_token: str
    ) -> tuple[Sequence[BatchView], str]:
        async def fetch(
            tx: UnitOfWork, page: PageRequest
        ) -> tuple[Sequence[BatchView], str | None]:
            items, last = await tx.batches.page(page)
            return await tx.batches.views(items), last

        return await list_page(self._uow, "batches", page_size, page_token, fetch)

    async def cancel_batch(self, id_: str) -> BatchView:
        """Cancels the queued runs; a running one finishes its current teacher call
        and makes no further attempt."""
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            batch = require(await tx.batches.get(id_, for_update=True), "batch", id_)
            if batch.cancel_time is None:
                when = now()
                await tx.batches.mark_cancelled(id_, when)
                cancelled = await tx.runs.cancel_queued(id_, when)
                await tx.events.append(
                    [
                        NewEvent(run_id, id_, RunStatus.CANCELLED, attempt)
                        for run_id, attempt in cancelled
                    ]
                )
                await tx.commit()
            return await tx.batches.view(require(await tx.batches.get(id_), "batch", id_))

    # -- runs --------------------------------------------------------------------

    async def create_runs(
        self, batch_id: str, inputs: Sequence[NewRun], *, single: bool = False
    ) -> list[Run]:
        """Renders and queues runs, all or nothing; repeated request ids return the
        first result. Field paths name `runs[i]` (or plain fields for CreateRun)."""
        v = Violations()
        check_id(v, "batch_id", batch_id)
        if not single and not inputs:
            v.add("runs", "give at least one run")
        if len(inputs) > MAX_RUNS_PER_CALL:
            v.add("runs", f"at most {MAX_RUNS_PER_CALL} runs per call; split the list")
        seen_request_ids: dict[str, int] = {}
        for i, item in enumerate(inputs):
            prefix = "" if single else f"runs[{i}]."
            check_request_id(v, f"{prefix}request_id", item.request_id)
            if item.request_id:
                if item.request_id in seen_request_ids:
                    v.add(
                        f"{prefix}request_id",
                        f"repeats runs[{seen_request_ids[item.request_id]}].request_id",
                    )
                seen_request_ids[item.request_id] = i
        v.raise_if_any()
        async with self._uow() as tx:
            batch = require(await tx.batches.get(batch_id, for_share=True), "batch", batch_id)
            existing = await tx.runs.by_request_ids(list(seen_request_ids))
            template = require(
                await tx.templates.get(batch.template_id), "template", batch.template_id
            )
            for i, item in enumerate(inputs):
                if item.request_id not in existing:
                    field_name = "variables" if single else f"runs[{i}].variables"
                    v.extend(check_variables(template, item.variables, field_name))
            v.raise_if_any()
            fresh = [(i, item) for i, item in enumerate(inputs) if item.request_id not in existing]
            if fresh and batch.cancel_time is not None:
                raise FailedPrecondition(f"batch {batch_id} is cancelled", reason="BATCH_CANCELLED")
            created_at = now()
            ids = new_ids("run", len(fresh))
            new_runs: list[Run] = []
            for run_id, (index, item) in zip(ids, fresh, strict=True):
                try:
                    messages = render(template, item.variables)
                except InvalidArgument as exc:
                    prefix = "" if single else f"runs[{index}]."
                    raise InvalidArgument(
                        [type(x)(f"{prefix}{x.field}", x.description) for x in exc.violations]
                    ) from None
                new_runs.append(
                    Run(
                        id=run_id,
                        batch_id=batch_id,
                        status=RunStatus.QUEUED,
                        variables=dict(item.variables),
                        messages=messages,
                        request_id=item.request_id,
                        attempt=0,
                        create_time=created_at,
                    )
                )
            inserted = await tx.runs.insert_queued(new_runs)
            if len(inserted) != len(new_runs):
                # A concurrent call took one of the request ids: start over, then
                # every request id resolves to that call's runs.
                await tx.rollback()
                return await self.create_runs(batch_id, inputs, single=single)
            await tx.events.append(
                [NewEvent(r.id, batch_id, RunStatus.QUEUED, 0) for r in new_runs]
            )
            await tx.commit()
        await self._queue.try_enqueue(EXECUTE_RUN, [r.id for r in new_runs])
        by_request = {r.request_id: r for r in new_runs if r.request_id}
        by_request.update(existing)
        fresh_iter = iter(new_runs)
        return [
            by_request[i.request_id] if i.request_id in existing else next(fresh_iter)
            for i in inputs
        ]

    async def get_run(self, id_: str, *, full: bool = True) -> Run:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return require(await tx.runs.get(id_, full=full), "run", id_)

    async def list_runs(
        self,
        *,
        batch_id: str,
        status: RunStatus | None,
        page_size: int,
        page_token: str,
        full: bool,
    ) -> tuple[Sequence[Run], str]:
        v = Violations()
        check_id(v, "batch_id", batch_id)

        async def fetch(tx: UnitOfWork, page: PageRequest) -> tuple[Sequence[Run], str | None]:
            require(await tx.batches.get(batch_id), "batch", batch_id)
            return await tx.runs.page(page, batch_id=batch_id, status=status, full=full)

        key = f"runs|{batch_id}|{status or ''}"
        return await list_page(self._uow, key, page_size, page_token, fetch, v)

    async def set_run_scores(self, run_id: str, scores: Mapping[str, float]) -> Run:
        v = Violations()
        check_id(v, "run_id", run_id)
        check_scores(v, "scores", scores)
        v.raise_if_any()
        async with self._uow() as tx:
            status = require(await tx.runs.status_of(run_id), "run", run_id)
            if status is not RunStatus.COMPLETED:
                raise FailedPrecondition(
                    f"run {run_id} is {status.value}; scores attach to completed runs",
                    reason="RUN_NOT_COMPLETED",
                )
            await tx.runs.merge_scores(run_id, scores)
            await tx.commit()
            return require(await tx.runs.get(run_id, full=False), "run", run_id)
