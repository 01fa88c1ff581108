"""Use cases of TeacherService: batches, runs, scores (the watch is in watch.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nex.collector.server.db.repositories.events import NewEvent
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.batches import (
    Batch,
    BatchView,
    ExecutionMode,
    check_params,
    check_scores,
)
from nex.collector.server.domain.budgets import MAX_COST_USD, CostEstimate, check_cap
from nex.collector.server.domain.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Violations,
    integration_disabled,
    require,
)
from nex.collector.server.domain.limits import MAX_RUNS_PER_CALL
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.runs import Run, RunStatus
from nex.collector.server.domain.sizes import (
    MAX_CALL_INPUT_BYTES,
    MAX_RUN_INPUT_BYTES,
    check_output_size,
    input_bytes,
    input_size,
    run_bytes,
)
from nex.collector.server.domain.teacher import ChatMessage, GenerationParams
from nex.collector.server.domain.teachers import TeacherDirectory
from nex.collector.server.domain.templates import (
    PromptTemplate,
    RenderFailed,
    TemplateEngine,
    check_variables,
)
from nex.collector.server.domain.validation import (
    check_id,
    check_labels,
    check_request_id,
    check_required,
)
from nex.collector.server.ids import new_id, new_ids
from nex.collector.server.queue import EXECUTE_RUN, JobQueue
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.clock import now
from nex.collector.server.services.context_refs import usable_ref
from nex.collector.server.services.evidence import Evidence
from nex.collector.server.services.pages import list_page

# Tries of create_runs' transaction before a conflict on request ids is UNAVAILABLE.
CREATE_RUNS_ATTEMPTS = 5
# Tries of cancel_batch's transaction when PostgreSQL breaks a deadlock with it.
CANCEL_ATTEMPTS = 3


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
    max_cost_usd: float | None = None
    execution_mode: ExecutionMode = ExecutionMode.ONLINE
    # An absolute time, or a duration from now (at most one of them).
    deadline_time: datetime | None = None
    deadline_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class NewRun:
    variables: Mapping[str, str]
    request_id: str = ""


def _check_run_size(
    v: Violations, field: str, variables: Mapping[str, str], messages: Sequence[ChatMessage]
) -> int:
    """Adds a violation when one run is too big to return; gives its size."""
    size = input_bytes(variables, messages)
    if size > MAX_RUN_INPUT_BYTES:
        v.add(
            field,
            f"the variables and the prompt rendered from them come to {input_size(size)}; "
            f"a run holds at most {input_size(MAX_RUN_INPUT_BYTES)}",
        )
    return size


class Teacher:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        engine: TemplateEngine,
        *,
        teachers: TeacherDirectory,
        integrated: bool = False,
        budgets: Budgets | None = None,
        evidence: Evidence | None = None,
    ) -> None:
        self._uow = uow
        self._evidence = evidence
        self._queue = queue
        self._budgets = budgets or Budgets(uow)
        self._engine = engine
        self._integrated = integrated
        self._teachers = teachers
        # teacher -> why it cannot be used here (None: usable)
        self._provider_problem = {t.name: t.problem for t in teachers}

    def _check_teacher(self, v: Violations, provider: str, params: GenerationParams) -> None:
        """`provider` names a known teacher that accepts the params' top_logprobs."""
        self._teachers.check(v, "provider", provider, params.top_logprobs)

    def _check_provider_batch(self, provider: str) -> None:
        teacher = self._teachers.get(provider)
        if teacher is not None and not teacher.batch.supported:
            raise FailedPrecondition(
                f"teacher {provider!r} has no provider batch support (kind "
                f"{teacher.kind.value}); use execution mode ONLINE, or a teacher whose "
                "teachers-file entry sets batch.supported",
                reason="PROVIDER_BATCH_UNSUPPORTED",
                metadata={"provider": provider},
            )

    # -- batches -----------------------------------------------------------------

    async def create_batch(self, cmd: NewBatch) -> BatchView:
        v = Violations()
        check_required(v, "name", cmd.name)
        check_id(v, "template_id", cmd.template_id)
        self._check_teacher(v, cmd.provider, cmd.params)
        check_required(v, "model", cmd.model)
        check_params(v, "params", cmd.params)
        check_output_size(v, "params", cmd.params)
        check_labels(v, "labels", cmd.labels)
        check_id(v, "context_ref_id", cmd.context_ref_id, required=False)
        check_request_id(v, "request_id", cmd.request_id)
        check_cap(v, MAX_COST_USD, cmd.max_cost_usd)
        if cmd.link_evidence and not cmd.context_ref_id:
            v.add("link_evidence", "needs context_ref_id")
        created_at = now()
        deadline = cmd.deadline_time
        if cmd.deadline_after is not None:
            if cmd.deadline_after <= timedelta(0):
                v.add("deadline_after", "must be positive")
            deadline = created_at + cmd.deadline_after
        elif deadline is not None and deadline <= created_at:
            v.add("deadline_time", "is in the past")
        v.raise_if_any()
        if cmd.execution_mode.via_provider:
            self._check_provider_batch(cmd.provider)
        if cmd.max_cost_usd is not None:
            self._budgets.check_cappable(cmd.provider, cmd.model, cmd.params, on_create=True)
        if cmd.link_evidence and not self._integrated:
            raise integration_disabled("evidence links (link_evidence)")
        if problem := self._provider_problem.get(cmd.provider):
            raise FailedPrecondition(
                problem, reason="PROVIDER_NOT_CONFIGURED", metadata={"provider": cmd.provider}
            )
        async with self._uow() as tx:
            if cmd.request_id and (found := await tx.batches.get_by_request_id(cmd.request_id)):
                return await self._view(tx, found)
            require(await tx.templates.get(cmd.template_id), "template", cmd.template_id)
            if cmd.context_ref_id:
                usable_ref(
                    await tx.context_refs.get(cmd.context_ref_id),
                    cmd.context_ref_id,
                    integrated=self._integrated,
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
                create_time=created_at,
                max_cost_usd=cmd.max_cost_usd,
                execution_mode=cmd.execution_mode,
                deadline_time=deadline,
            )
            if not await tx.batches.insert(batch, cmd.request_id):
                await tx.rollback()
                winner = require(
                    await tx.batches.get_by_request_id(cmd.request_id), "batch", cmd.request_id
                )
                return await self._view(tx, winner)
            await tx.commit()
            return await self._view(tx, batch)

    async def get_batch(self, id_: str) -> BatchView:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return await self._view(tx, require(await tx.batches.get(id_), "batch", id_))

    async def _view(self, tx: UnitOfWork, batch: Batch) -> BatchView:
        return self._budgets.with_estimate(await tx.batches.view(batch))

    async def update_batch(
        self, id_: str, update_mask: Sequence[str], *, max_cost_usd: float | None
    ) -> BatchView:
        """Changes the fields named in `update_mask` (only max_cost_usd for now).
        Raising the cap of a batch paused for its budget resumes its runs."""
        v = Violations()
        check_id(v, "batch.id", id_)
        if not update_mask:
            v.add("update_mask", f"name the fields to change; updatable: {MAX_COST_USD}")
        for i, path in enumerate(update_mask):
            if path != MAX_COST_USD:
                v.add(
                    f"update_mask.paths[{i}]",
                    f"{path!r} cannot be updated; updatable: {MAX_COST_USD}",
                )
        check_cap(v, f"batch.{MAX_COST_USD}", max_cost_usd)
        v.raise_if_any()
        async with self._uow() as tx:
            batch = require(await tx.batches.get(id_), "batch", id_)
        if batch.cancel_time is not None:
            raise FailedPrecondition(f"batch {id_} is cancelled", reason="BATCH_CANCELLED")
        resumed = await self._budgets.set_cap(batch, max_cost_usd)
        await self._queue.try_enqueue(EXECUTE_RUN, resumed)
        return await self.get_batch(id_)

    async def estimate_batch(
        self,
        *,
        template_id: str,
        provider: str,
        model: str,
        params: GenerationParams,
        inputs: Sequence[NewRun],
    ) -> CostEstimate:
        """The worst-case cost of a would-be batch: renders every input, stores
        nothing, calls no teacher."""
        v = Violations()
        check_id(v, "template_id", template_id)
        self._check_teacher(v, provider, params)
        check_required(v, "model", model)
        check_params(v, "params", params)
        if len(inputs) > MAX_RUNS_PER_CALL:
            v.add("runs", f"at most {MAX_RUNS_PER_CALL} runs per call; split the list")
        v.raise_if_any()
        async with self._uow() as tx:
            template = require(await tx.templates.get(template_id), "template", template_id)
        for i, item in enumerate(inputs):
            v.extend(check_variables(template, item.variables, f"runs[{i}].variables"))
        v.raise_if_any()
        rendered = await self._render(template, list(enumerate(inputs)), single=False)
        prompts = [rendered[i] for i in range(len(inputs))]
        return self._budgets.estimate(provider, model, params, prompts)

    async def list_batches(
        self, *, page_size: int, page_token: str
    ) -> tuple[Sequence[BatchView], str]:
        async def fetch(
            tx: UnitOfWork, page: PageRequest
        ) -> tuple[Sequence[BatchView], str | None]:
            items, last = await tx.batches.page(page)
            return [self._budgets.with_estimate(v) for v in await tx.batches.views(items)], last

        return await list_page(self._uow, "batches", page_size, page_token, fetch)

    async def cancel_batch(self, id_: str) -> BatchView:
        """Cancels the queued runs; a running one finishes its current teacher call
        and makes no further attempt."""
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        # Cancelling updates every queued run of the batch while workers claim some
        # of them: PostgreSQL may break the lock cycle by rolling this back.
        for _ in range(CANCEL_ATTEMPTS - 1):
            try:
                return await self._cancel(id_)
            except Unavailable as exc:
                if exc.reason != "TRANSACTION_CONFLICT":
                    raise
        return await self._cancel(id_)

    async def _cancel(self, id_: str) -> BatchView:
        async with self._uow() as tx:
            batch = require(await tx.batches.get(id_, for_update=True), "batch", id_)
            if batch.cancel_time is None:
                when = now()
                await tx.batches.mark_cancelled(id_, when)
                cancelled = await tx.runs.cancel_queued(id_, when)
                # Runs in provider jobs: the jobs are cancelled at the provider;
                # results already produced are kept when they are ingested.
                await tx.provider_jobs.request_cancel(id_, when)
                await tx.events.append(
                    [
                        NewEvent(run_id, id_, RunStatus.CANCELLED, attempt)
                        for run_id, attempt in cancelled
                    ]
                )
                links = (
                    await self._evidence.link_finished_batches(tx, [id_])
                    if self._evidence and cancelled
                    else []
                )
                await tx.commit()
                if self._evidence is not None:
                    await self._evidence.enqueue(links)
            return await self._view(tx, require(await tx.batches.get(id_), "batch", id_))

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
        # A concurrent call that takes one of the request ids makes this one start
        # over (then every request id resolves to that call's runs); bounded, since
        # each conflict means another call committed.
        for _ in range(CREATE_RUNS_ATTEMPTS):
            created = await self._insert_runs(batch_id, inputs, seen_request_ids, single=single)
            if created is not None:
                break
        else:
            raise Unavailable(
                f"concurrent calls kept taking the same request ids of batch {batch_id}; "
                "retry the call",
                reason="REQUEST_ID_CONFLICT",
            )
        new_runs, existing, via_provider = created
        if not via_provider:  # else a worker's provider-jobs loop takes them
            await self._queue.try_enqueue(EXECUTE_RUN, [r.id for r in new_runs])
        by_request = {r.request_id: r for r in new_runs if r.request_id}
        by_request.update(existing)
        fresh_iter = iter(new_runs)
        return [
            by_request[i.request_id] if i.request_id in existing else next(fresh_iter)
            for i in inputs
        ]

    async def _insert_runs(
        self,
        batch_id: str,
        inputs: Sequence[NewRun],
        seen_request_ids: Mapping[str, int],
        *,
        single: bool,
    ) -> tuple[list[Run], Mapping[str, Run], bool] | None:
        """One try at create_runs' transaction; None when a concurrent call took
        one of the request ids first."""
        v = Violations()
        async with self._uow() as tx:
            batch = require(await tx.batches.get(batch_id), "batch", batch_id)
            existing = await tx.runs.by_request_ids(list(seen_request_ids))
            template = require(
                await tx.templates.get(batch.template_id), "template", batch.template_id
            )
        for i, item in enumerate(inputs):
            if item.request_id not in existing:
                field_name = "variables" if single else f"runs[{i}].variables"
                v.extend(check_variables(template, item.variables, field_name))
        v.raise_if_any()
        if batch.cancel_time is not None and any(i.request_id not in existing for i in inputs):
            raise FailedPrecondition(f"batch {batch_id} is cancelled", reason="BATCH_CANCELLED")
        # Rendered in the sandbox, with no transaction open: a hostile template may
        # take its whole CPU limit, and must not hold a database connection meanwhile.
        prompts = await self._render(
            template, [(i, x) for i, x in enumerate(inputs) if x.request_id not in existing], single
        )
        async with self._uow() as tx:
            batch = require(await tx.batches.get(batch_id, for_share=True), "batch", batch_id)
            existing = await tx.runs.by_request_ids(list(seen_request_ids))
            fresh = [(i, item) for i, item in enumerate(inputs) if item.request_id not in existing]
            if fresh and batch.cancel_time is not None:
                raise FailedPrecondition(f"batch {batch_id} is cancelled", reason="BATCH_CANCELLED")
            created_at = now()
            ids = new_ids("run", len(fresh))
            new_runs: list[Run] = []
            call_bytes = 0
            for run_id, (index, item) in zip(ids, fresh, strict=True):
                prefix = "" if single else f"runs[{index}]."
                messages = prompts[index]
                call_bytes += _check_run_size(v, f"{prefix}variables", item.variables, messages)
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
            if call_bytes > MAX_CALL_INPUT_BYTES:
                v.add(
                    "runs",
                    f"these runs' variables and rendered prompts come to "
                    f"{input_size(call_bytes)}; at most {input_size(MAX_CALL_INPUT_BYTES)} "
                    "per call: split the list",
                )
            v.raise_if_any()  # before anything is written: the reply always fits
            via_provider = batch.execution_mode.via_provider
            inserted = await tx.runs.insert_queued(new_runs, via_provider=via_provider)
            if len(inserted) != len(new_runs):
                await tx.rollback()
                return None
            await tx.events.append(
                [NewEvent(r.id, batch_id, RunStatus.QUEUED, 0) for r in new_runs]
            )
            await tx.commit()
        return new_runs, existing, via_provider

    async def _render(
        self, template: PromptTemplate, runs: Sequence[tuple[int, NewRun]], single: bool
    ) -> dict[int, list[ChatMessage]]:
        """The prompt of each (index, run); a failure names the run and its cause."""
        try:
            rendered = await self._engine.render(template, [item.variables for _, item in runs])
        except RenderFailed as exc:
            if not 0 <= exc.index < len(runs):
                # Not one run's fault: the template itself (compiled before any run).
                raise InvalidArgument.one(
                    "variables" if single else "runs",
                    f"template {template.id} ({exc.field}) could not be rendered: "
                    f"{exc.description}",
                ) from None
            index = runs[exc.index][0]
            field_name = "variables" if single else f"runs[{index}].variables"
            raise InvalidArgument.one(
                field_name, f"{exc.field} could not be rendered: {exc.description}"
            ) from None
        return {index: messages for (index, _), messages in zip(runs, rendered, strict=True)}

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
        return await list_page(
            self._uow, key, page_size, page_token, fetch, v, size_of=run_bytes, id_of=lambda r: r.id
        )

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
