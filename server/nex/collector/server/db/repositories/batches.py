from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import batches, runs
from nex.collector.server.domain.batches import Batch, BatchView, RunCounts, Usage
from nex.collector.server.domain.pagination import PageRequest
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
    )


class BatchRepository(Repository):
    table = batches

    async def get(
        self, id_: str, *, for_update: bool = False, for_share: bool = False
    ) -> Batch | None:
        """`for_share` keeps a concurrent cancel (which takes `for_update`) out
        until the transaction ends."""
        stmt = select(batches).where(batches.c.id == id_)
        if for_update or for_share:
            stmt = stmt.with_for_update(read=for_share and not for_update)
        row = await self._one(stmt)
        return _entity(row) if row else None

    async def get_by_request_id(self, request_id: str) -> Batch | None:
        row = await self._one(select(batches).where(batches.c.request_id == request_id))
        return _entity(row) if row else None

    async def insert(self, b: Batch, request_id: str) -> bool:
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
            )
            .on_conflict_do_nothing(index_elements=[batches.c.request_id])
            .returning(batches.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def mark_cancelled(self, id_: str, when: datetime) -> None:
        await self.session.execute(
            update(batches)
            .where(batches.c.id == id_, batches.c.cancel_time.is_(None))
            .values(cancel_time=when)
        )

    async def view(self, batch: Batch) -> BatchView:
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
            )
            .where(runs.c.batch_id.in_([b.id for b in items]))
            .group_by(runs.c.batch_id, runs.c.status)
        )
        per_batch: dict[str, dict[str, Any]] = {}
        for row in (await self.session.execute(stmt)).mappings():
            acc = per_batch.setdefault(
                row["batch_id"], {"counts": {}, "in": 0, "out": 0, "cost": 0.0}
            )
            acc["counts"][row["status"]] = row["n"]
            acc["in"] += int(row["input_tokens"])
            acc["out"] += int(row["output_tokens"])
            acc["cost"] += float(row["cost_usd"])
        result = []
        for b in items:
            acc = per_batch.get(b.id, {"counts": {}, "in": 0, "out": 0, "cost": 0.0})
            result.append(
                BatchView(
                    b,
                    RunCounts.from_mapping(acc["counts"]),
                    Usage(acc["in"], acc["out"], round(acc["cost"], 9)),
                )
            )
        return result

    async def page(self, page: PageRequest) -> tuple[Sequence[Batch], str | None]:
        rows, next_key = await self._page(select(batches), page, batches.c.id)
        return [_entity(r) for r in rows], next_key
