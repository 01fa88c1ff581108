from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import batches, budgets, provider_jobs, runs
from nex.collector.server.domain.batches import (
    Batch,
    BatchView,
    ExecutionMode,
    ProviderJobView,
    RunCounts,
)
from nex.collector.server.domain.budgets import BatchPause, Budget, batch_scope
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.runs import RunError, RunStatus, Usage
from nex.collector.server.domain.teacher import GenerationParams


def params_to_json(p: GenerationParams) -> dict[str, Any]:
    data = asdict(p)
    data["stop"] = list(p.stop)
    return {k: v for k, v in data.items() if v is not None}


def params_from_json(data: Mapping[str, Any]) -> GenerationParams:
    return GenerationParams(
        temperature=data.get("temperature"),
        max_tokens=data.get("max_tokens"),
        top_p=data.get("top_p"),
        top_logprobs=data.get("top_logprobs"),
        seed=data.get("seed"),
        stop=tuple(data.get("stop") or ()),
    )


def _entity(row: Mapping[Any, Any]) -> Batch:
    return Batch(
        id=row["id"],
        name=row["name"],
        template_id=row["template_id"],
        provider=row["provider"],
        model=row["model"],
        params=params_from_json(row["params"]),
        context_ref_id=row["context_ref_id"],
        labels=dict(row["labels"]),
        link_evidence=row["link_evidence"],
        create_time=row["create_time"],
        cancel_time=row["cancel_time"],
        max_cost_usd=row["max_cost_usd"],
        pause=BatchPause(
            row["pause_reason"],
            row["pause_message"] or "",
            row["pause_time"],
            row["pause_scope"] or "",
        )
        if row["pause_reason"]
        else None,
        execution_mode=ExecutionMode(row["execution_mode"]),
        deadline_time=row["deadline_time"],
    )


def _select() -> Select[Any]:
    """A batch row with its cap (kept in its budget scope)."""
    return select(batches, budgets.c.max_cost_usd).outerjoin(
        budgets, budgets.c.scope == func.concat("batch:", batches.c.id)
    )


class BatchRepository(Repository):
    """Batches, their budget rows, and the views derived from their runs."""

    table = batches

    async def get(
        self, id_: str, *, for_update: bool = False, for_share: bool = False
    ) -> Batch | None:
        """`for_share` keeps a concurrent cancel (which takes `for_update`) out
        until the transaction ends."""
        stmt = _select().where(batches.c.id == id_)
        if for_update or for_share:
            stmt = stmt.with_for_update(read=for_share and not for_update, of=batches)
        row = await self._one(stmt)
        return _entity(row) if row else None

    async def get_by_request_id(self, request_id: str) -> Batch | None:
        """The batch an earlier create with this request id made (idempotent retries)."""
        row = await self._one(_select().where(batches.c.request_id == request_id))
        return _entity(row) if row else None

    async def insert(self, b: Batch, request_id: str) -> bool:
        """Stores the batch and its budget row; False when a create with the same
        request id won (nothing is written then)."""
        stmt = (
            insert(batches)
            .values(
                id=b.id,
                name=b.name,
                template_id=b.template_id,
                provider=b.provider,
                model=b.model,
                params=params_to_json(b.params),
                context_ref_id=b.context_ref_id,
                labels=b.labels,
                link_evidence=b.link_evidence,
                request_id=request_id or None,
                create_time=b.create_time,
                execution_mode=b.execution_mode.value,
                deadline_time=b.deadline_time,
            )
            .on_conflict_do_nothing(index_elements=[batches.c.request_id])
            .returning(batches.c.id)
        )
        if (await self.session.execute(stmt)).first() is None:
            return False
        await self.session.execute(
            insert(budgets).values(scope=batch_scope(b.id), max_cost_usd=b.max_cost_usd)
        )
        return True

    async def pause(
        self, id_: str, reason: str, message: str, when: datetime, *, scope: str = ""
    ) -> bool:
        """Pauses the batch unless it already is; returns whether it did."""
        stmt = (
            update(batches)
            .where(batches.c.id == id_, batches.c.pause_time.is_(None))
            .values(pause_reason=reason, pause_message=message, pause_time=when, pause_scope=scope)
            .returning(batches.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def resume(self, id_: str) -> bool:
        """Clears the batch's pause; False when it was not paused."""
        stmt = (
            update(batches)
            .where(batches.c.id == id_, batches.c.pause_time.is_not(None))
            .values(pause_reason=None, pause_message=None, pause_time=None, pause_scope=None)
            .returning(batches.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def resume_paused_in_scopes_before(self, prefix: str, before: datetime) -> list[str]:
        """Resumes the batches paused before `before` by a scope starting with
        `prefix`; returns their ids."""
        stmt = (
            update(batches)
            .where(
                batches.c.pause_scope.startswith(prefix, autoescape=True),
                batches.c.pause_time < before,
                batches.c.cancel_time.is_(None),
            )
            .values(pause_reason=None, pause_message=None, pause_time=None, pause_scope=None)
            .returning(batches.c.id)
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def mark_cancelled(self, id_: str, when: datetime) -> None:
        """Records the first cancel time; a second cancel keeps it."""
        await self.session.execute(
            update(batches)
            .where(batches.c.id == id_, batches.c.cancel_time.is_(None))
            .values(cancel_time=when)
        )

    async def view(self, batch: Batch) -> BatchView:
        """One batch with its counts and usage (see `views`)."""
        return (await self.views([batch]))[0]

    async def views(self, items: Sequence[Batch]) -> list[BatchView]:
        """Counts per status and usage, derived from the runs (one query)."""
        if not items:
            return []
        stmt = (
            select(
                runs.c.batch_id,
                runs.c.status,
                func.count().label("n"),
                func.coalesce(func.sum(runs.c.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(runs.c.output_tokens), 0).label("output_tokens"),
                func.coalesce(func.sum(runs.c.cost_usd), 0.0).label("cost_usd"),
                func.coalesce(func.sum(runs.c.prompt_tokens_bound), 0).label("prompt_bound"),
            )
            .where(runs.c.batch_id.in_([b.id for b in items]))
            .group_by(runs.c.batch_id, runs.c.status)
        )
        per_batch: dict[str, dict[str, Any]] = {}
        for row in (await self.session.execute(stmt)).mappings():
            acc = per_batch.setdefault(
                row["batch_id"], {"counts": {}, "in": 0, "out": 0, "cost": 0.0, "bound": 0}
            )
            acc["counts"][row["status"]] = row["n"]
            if row["status"] == RunStatus.QUEUED.value:
                acc["bound"] = int(row["prompt_bound"])
            acc["in"] += int(row["input_tokens"])
            acc["out"] += int(row["output_tokens"])
            acc["cost"] += float(row["cost_usd"])
        money = {
            r["scope"]: Budget(r["max_cost_usd"], r["spent_usd"], r["reserved_usd"])
            for r in (
                await self.session.execute(
                    select(budgets).where(budgets.c.scope.in_([batch_scope(b.id) for b in items]))
                )
            ).mappings()
        }
        jobs: dict[str, list[ProviderJobView]] = {}
        if any(b.execution_mode.via_provider for b in items):
            for r in (
                await self.session.execute(
                    select(provider_jobs)
                    .where(provider_jobs.c.batch_id.in_([b.id for b in items]))
                    .order_by(provider_jobs.c.create_time, provider_jobs.c.id)
                )
            ).mappings():
                jobs.setdefault(r["batch_id"], []).append(provider_job_view(r))
        result = []
        for b in items:
            acc = per_batch.get(b.id, {"counts": {}, "in": 0, "out": 0, "cost": 0.0, "bound": 0})
            result.append(
                BatchView(
                    b,
                    RunCounts.from_mapping(acc["counts"]),
                    Usage(acc["in"], acc["out"], round(acc["cost"], 9)),
                    budget=money.get(batch_scope(b.id), Budget(b.max_cost_usd)),
                    queued_prompt_tokens_bound=acc["bound"],
                    provider_jobs=tuple(jobs.get(b.id, ())),
                )
            )
        return result

    async def page(self, page: PageRequest) -> tuple[Sequence[Batch], str | None]:
        """One page of batches in id order, and the key to continue after."""
        rows, next_key = await self._page(_select(), page, batches.c.id)
        return [_entity(r) for r in rows], next_key


def provider_job_view(r: Mapping[Any, Any]) -> ProviderJobView:
    return ProviderJobView(
        id=r["id"],
        teacher=r["teacher"],
        provider_job_id=r["provider_job_id"] or "",
        input_file_id=r["input_file_id"] or "",
        state=r["state"],
        request_total=r["request_total"],
        request_completed=r["request_completed"],
        request_failed=r["request_failed"],
        submit_time=r["submit_time"],
        finish_time=r["finish_time"],
        error=RunError(r["error_code"], r["error_message"] or "") if r["error_code"] else None,
        cost_usd=r["cost_usd"],
        online_cost_usd=r["online_cost_usd"],
        update_time=r["update_time"],
    )
