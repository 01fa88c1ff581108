"""Use cases of EvidenceService, and the outbox that delivers links to NEX: a link
is stored PENDING at once and a worker posts it until NEX accepts it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from nex.collector.server import metrics
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.datasets import Dataset
from nex.collector.server.domain.errors import (
    Unavailable,
    Violations,
    integration_disabled,
    require,
)
from nex.collector.server.domain.evidence import EvidenceLink, EvidenceStatus, retry_delay
from nex.collector.server.domain.limits import MAX_KIND, MAX_NOTE
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.validation import check_id, check_request_id
from nex.collector.server.ids import new_id
from nex.collector.server.integrations.nex import EvidencePayload, NexClient, NexRejected
from nex.collector.server.queue import DELIVER_EVIDENCE, JobQueue
from nex.collector.server.services.clock import now
from nex.collector.server.services.context_refs import usable_ref
from nex.collector.server.services.pages import list_page

log = logging.getLogger(__name__)

# How long a delivery holds its link before another worker may try it.
DELIVERY_LEASE = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class NewEvidenceLink:
    context_ref_id: str
    dataset_id: str = ""
    run_id: str = ""
    kind: str = ""
    note: str = ""
    request_id: str = ""


class Evidence:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        nex: NexClient | None,
        *,
        lease: timedelta = DELIVERY_LEASE,
    ) -> None:
        self._uow = uow
        self._queue = queue
        self._nex = nex
        self._lease = lease

    @property
    def enabled(self) -> bool:
        return self._nex is not None

    def _require_integrated(self) -> NexClient:
        if self._nex is None:
            raise integration_disabled("evidence links")
        return self._nex

    async def create(self, cmd: NewEvidenceLink) -> EvidenceLink:
        self._require_integrated()
        v = Violations()
        check_id(v, "context_ref_id", cmd.context_ref_id)
        if bool(cmd.dataset_id) == bool(cmd.run_id):
            v.add("target", "set exactly one of dataset_id and run_id")
        check_id(v, "dataset_id", cmd.dataset_id, required=False)
        check_id(v, "run_id", cmd.run_id, required=False)
        if len(cmd.kind) > MAX_KIND:
            v.add("kind", f"must be at most {MAX_KIND} characters")
        if len(cmd.note) > MAX_NOTE:
            v.add("note", f"must be at most {MAX_NOTE} characters")
        check_request_id(v, "request_id", cmd.request_id)
        v.raise_if_any()
        async with self._uow() as tx:
            if cmd.request_id and (found := await tx.evidence.get_by_request_id(cmd.request_id)):
                return found
            usable_ref(
                await tx.context_refs.get(cmd.context_ref_id), cmd.context_ref_id, integrated=True
            )
            if cmd.dataset_id:
                require(await tx.datasets.get(cmd.dataset_id), "dataset", cmd.dataset_id)
            else:
                require(await tx.runs.status_of(cmd.run_id), "run", cmd.run_id)
            link = EvidenceLink(
                id=new_id("evl"),
                context_ref_id=cmd.context_ref_id,
                dataset_id=cmd.dataset_id or None,
                run_id=cmd.run_id or None,
                kind=cmd.kind or "evidence",
                note=cmd.note,
                status=EvidenceStatus.PENDING,
                attempts=0,
                last_error=None,
                create_time=now(),
            )
            if not await tx.evidence.insert(link, cmd.request_id):
                await tx.rollback()
                return require(
                    await tx.evidence.get_by_request_id(cmd.request_id),
                    "evidence_link",
                    cmd.request_id,
                )
            await tx.commit()
        await self._queue.try_enqueue(DELIVER_EVIDENCE, [link.id])
        return link

    async def get(self, id_: str) -> EvidenceLink:
        self._require_integrated()
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return require(await tx.evidence.get(id_), "evidence_link", id_)

    async def list(
        self, *, context_ref_id: str, page_size: int, page_token: str
    ) -> tuple[Sequence[EvidenceLink], str]:
        self._require_integrated()
        v = Violations()
        check_id(v, "context_ref_id", context_ref_id, required=False)
        return await list_page(
            self._uow,
            f"evidence|{context_ref_id}",
            page_size,
            page_token,
            lambda tx, page: tx.evidence.page(page, context_ref_id=context_ref_id),
            v,
        )

    # -- automatic links -------------------------------------------------------------
    #
    # Written in the caller's transaction, the one that finishes the batch's last
    # run or makes the dataset READY: a crash after that commit cannot lose a link.
    # The caller enqueues the ids returned once it has committed (`enqueue`); the
    # reconciler enqueues any link still due, so a lost enqueue only delays it.

    async def link_ready_dataset(self, tx: UnitOfWork, dataset: Dataset) -> Sequence[str]:
        """A dataset built with link_evidence is linked once it is READY."""
        if not (self.enabled and dataset.link_evidence and dataset.context_ref_id):
            return []
        return await self._insert_auto(
            tx,
            context_ref_id=dataset.context_ref_id,
            dataset_id=dataset.id,
            run_id=None,
            kind="distillation_dataset",
            note=f"dataset {dataset.name} {dataset.version}",
            request_id=f"auto:{dataset.id}",
        )

    async def link_finished_batches(
        self, tx: UnitOfWork, batch_ids: Iterable[str]
    ) -> Sequence[str]:
        """A batch created with link_evidence is linked (through its first run, the
        evidence that the collection finished) once none of its runs is active.

        Call it last in a transaction that ended runs, after its events: a lock per
        batch, held until commit, makes two transactions that end a batch's last
        runs at once see each other's, so one of them links it."""
        if not self.enabled:
            return []
        created: list[str] = []
        for batch_id in sorted(set(batch_ids)):
            batch = await tx.batches.get(batch_id)
            if batch is None or not batch.link_evidence or not batch.context_ref_id:
                continue
            await tx.evidence.lock_batch(batch_id)
            if await tx.runs.active_count(batch_id):
                continue
            runs, _ = await tx.runs.page(
                PageRequest(1, None), batch_id=batch_id, status=None, full=False
            )
            if runs:
                created.extend(
                    await self._insert_auto(
                        tx,
                        context_ref_id=batch.context_ref_id,
                        dataset_id=None,
                        run_id=runs[0].id,
                        kind="teacher_batch",
                        note=f"batch {batch.name} ({batch.id}) finished",
                        request_id=f"auto:{batch_id}",
                    )
                )
        return created

    async def enqueue(self, link_ids: Sequence[str]) -> None:
        """After the commit that created them: deliver now rather than at the
        reconciler's next pass."""
        if link_ids:
            await self._queue.try_enqueue(DELIVER_EVIDENCE, list(link_ids))

    @staticmethod
    async def _insert_auto(
        tx: UnitOfWork,
        *,
        context_ref_id: str,
        dataset_id: str | None,
        run_id: str | None,
        kind: str,
        note: str,
        request_id: str,
    ) -> Sequence[str]:
        link = EvidenceLink(
            id=new_id("evl"),
            context_ref_id=context_ref_id,
            dataset_id=dataset_id,
            run_id=run_id,
            kind=kind,
            note=note,
            status=EvidenceStatus.PENDING,
            attempts=0,
            last_error=None,
            create_time=now(),
        )
        return [link.id] if await tx.evidence.insert(link, request_id) else []

    # -- the outbox --------------------------------------------------------------

    async def deliver(self, link_id: str) -> str:
        """One delivery attempt. The link is claimed with a lease, committed, and
        posted with no row lock held: a slow NEX holds up no other transaction, and
        a worker that dies mid-post leaves the link due again when the lease ends."""
        nex = self._require_integrated()
        async with self._uow() as tx:
            claimed = await tx.evidence.claim(link_id, self._lease, now())
            if claimed is None:
                return "skipped: posted, not due, or another worker holds it"
            link, claimed_until = claimed
            ref = require(
                await tx.context_refs.get(link.context_ref_id), "context_ref", link.context_ref_id
            )
            uri = ""
            if link.dataset_id and (dataset := await tx.datasets.get(link.dataset_id)):
                uri = dataset.uri
            await tx.commit()
        payload: EvidencePayload = {
            "collector_link_id": link.id,
            "nex_context_id": ref.nex_context_id,
            "nex_context_version": ref.nex_context_version,
            "kind": link.kind,
            "note": link.note,
            "dataset_id": link.dataset_id,
            "run_id": link.run_id,
            "uri": uri,
        }
        try:
            await nex.post_evidence(payload)
        except (Unavailable, NexRejected) as exc:
            async with self._uow() as tx:
                await tx.evidence.mark_failed(
                    link_id, claimed_until, str(exc), now() + retry_delay(link.attempts + 1)
                )
                await tx.commit()
            log.info("evidence link %s not delivered yet: %s", link_id, exc)
            metrics.EVIDENCE_DELIVERIES.labels("retry").inc()
            return f"retry later: {exc}"
        async with self._uow() as tx:
            await tx.evidence.mark_posted(link_id, now())
            await tx.commit()
        metrics.EVIDENCE_DELIVERIES.labels("posted").inc()
        return "posted"

    async def due(self) -> Sequence[str]:
        if not self.enabled:
            return []
        async with self._uow() as tx:
            return await tx.evidence.due(now())
