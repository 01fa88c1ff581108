from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.locks import LINK_LOCK
from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import evidence_links
from nex.collector.server.domain.evidence import EvidenceLink, EvidenceStatus
from nex.collector.server.domain.pagination import PageRequest


def _entity(row: Mapping[Any, Any]) -> EvidenceLink:
    return EvidenceLink(
        id=row["id"],
        context_ref_id=row["context_ref_id"],
        dataset_id=row["dataset_id"],
        run_id=row["run_id"],
        kind=row["kind"],
        note=row["note"],
        status=EvidenceStatus(row["status"]),
        attempts=row["attempts"],
        last_error=row["last_error"],
        create_time=row["create_time"],
        post_time=row["post_time"],
    )


class EvidenceRepository(Repository):
    """Evidence links and the state of their delivery to NEX."""

    table = evidence_links

    async def get(self, id_: str) -> EvidenceLink | None:
        """The link with this id, or None."""
        row = await self._one(select(evidence_links).where(evidence_links.c.id == id_))
        return _entity(row) if row else None

    async def get_by_request_id(self, request_id: str) -> EvidenceLink | None:
        """The link an earlier create with this request id made (idempotent retries)."""
        row = await self._one(
            select(evidence_links).where(evidence_links.c.request_id == request_id)
        )
        return _entity(row) if row else None

    async def insert(self, link: EvidenceLink, request_id: str) -> bool:
        """Stores a PENDING link, due for delivery at once; False when a create with
        the same request id won."""
        stmt = (
            insert(evidence_links)
            .values(
                id=link.id,
                context_ref_id=link.context_ref_id,
                dataset_id=link.dataset_id,
                run_id=link.run_id,
                kind=link.kind,
                note=link.note,
                status=link.status.value,
                request_id=request_id or None,
                create_time=link.create_time,
                next_attempt_time=link.create_time,
            )
            .on_conflict_do_nothing(index_elements=[evidence_links.c.request_id])
            .returning(evidence_links.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def page(
        self, page: PageRequest, *, context_ref_id: str = ""
    ) -> tuple[Sequence[EvidenceLink], str | None]:
        """One page in id order, of one context reference's links when named."""
        stmt = select(evidence_links)
        if context_ref_id:
            stmt = stmt.where(evidence_links.c.context_ref_id == context_ref_id)
        rows, next_key = await self._page(stmt, page, evidence_links.c.id)
        return [_entity(r) for r in rows], next_key

    async def claim(
        self, id_: str, lease: timedelta, now: datetime
    ) -> tuple[EvidenceLink, datetime] | None:
        """Takes a due link for one delivery attempt: it is not due again until the
        lease ends, so no other worker posts it meanwhile. Returns the link and the
        lease's end, which `mark_failed` checks (the claim is still this one)."""
        until = now + lease
        stmt = (
            update(evidence_links)
            .where(
                evidence_links.c.id == id_,
                evidence_links.c.status == EvidenceStatus.PENDING.value,
                evidence_links.c.next_attempt_time <= now,
            )
            .values(next_attempt_time=until)
            .returning(*evidence_links.c)
        )
        row = (await self.session.execute(stmt)).mappings().first()
        return (_entity(row), until) if row else None

    async def mark_posted(self, id_: str, now: datetime) -> None:
        """Marks a PENDING link delivered (a link no longer pending is left alone)."""
        await self.session.execute(
            update(evidence_links)
            .where(
                evidence_links.c.id == id_,
                evidence_links.c.status == EvidenceStatus.PENDING.value,
            )
            .values(
                status=EvidenceStatus.POSTED.value,
                post_time=now,
                attempts=evidence_links.c.attempts + 1,
                last_error=None,
                next_attempt_time=None,
            )
        )

    async def mark_failed(
        self, id_: str, claimed_until: datetime, error: str, next_attempt: datetime
    ) -> None:
        """Only while the claim that ends at `claimed_until` is the latest one."""
        await self.session.execute(
            update(evidence_links)
            .where(
                evidence_links.c.id == id_,
                evidence_links.c.status == EvidenceStatus.PENDING.value,
                evidence_links.c.next_attempt_time == claimed_until,
            )
            .values(
                attempts=evidence_links.c.attempts + 1,
                last_error=error[:1000],
                next_attempt_time=next_attempt,
            )
        )

    async def lock_batch(self, batch_id: str) -> None:
        """A lock on linking `batch_id`, held until the transaction ends."""
        await self.session.execute(
            select(func.pg_advisory_xact_lock(LINK_LOCK, func.hashtext(batch_id)))
        )

    async def count_pending(self) -> int:
        """How many links wait for delivery (the delivery backlog)."""
        stmt = select(func.count()).where(evidence_links.c.status == EvidenceStatus.PENDING.value)
        return int((await self.session.execute(stmt)).scalar_one())

    async def due(self, now: datetime, limit: int = 1000) -> list[str]:
        """Ids of PENDING links whose next attempt is due, the longest waiting first."""
        stmt = (
            select(evidence_links.c.id)
            .where(
                evidence_links.c.status == EvidenceStatus.PENDING.value,
                evidence_links.c.next_attempt_time <= now,
            )
            .order_by(evidence_links.c.next_attempt_time)
            .limit(limit)
        )
        return [r[0] for r in await self.session.execute(stmt)]
