"""Use cases of ContextRefService."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.context_refs import ContextRef
from nex.collector.server.domain.errors import FailedPrecondition, Violations, quote, require
from nex.collector.server.domain.limits import MAX_NAME
from nex.collector.server.domain.validation import (
    check_id,
    check_labels,
    check_request_id,
    check_required,
    check_url_segment,
)
from nex.collector.server.ids import new_id
from nex.collector.server.services.clock import now
from nex.collector.server.services.pages import list_page

# Asks NEX whether a context version exists (integrated mode); None in standalone.
ContextChecker = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class NewContextRef:
    nex_context_id: str
    nex_context_version: str
    labels: Mapping[str, str]
    request_id: str = ""


class ContextRefs:
    def __init__(self, uow: UnitOfWorkFactory, checker: ContextChecker | None = None) -> None:
        self._uow = uow
        self._checker = checker

    async def create(self, cmd: NewContextRef) -> ContextRef:
        v = Violations()
        check_required(v, "nex_context_id", cmd.nex_context_id, max_len=MAX_NAME)
        check_required(v, "nex_context_version", cmd.nex_context_version, max_len=MAX_NAME)
        check_url_segment(v, "nex_context_id", cmd.nex_context_id)
        check_url_segment(v, "nex_context_version", cmd.nex_context_version)
        check_labels(v, "labels", cmd.labels)
        check_request_id(v, "request_id", cmd.request_id)
        v.raise_if_any()
        async with self._uow() as tx:
            existing = await tx.context_refs.find(
                request_id=cmd.request_id,
                nex_context_id=cmd.nex_context_id,
                nex_context_version=cmd.nex_context_version,
            )
        if existing and (existing.confirm_time or self._checker is None):
            return existing
        confirmed = await self._confirm(
            existing.nex_context_id if existing else cmd.nex_context_id,
            existing.nex_context_version if existing else cmd.nex_context_version,
        )
        if existing:  # made in standalone mode: NEX has now confirmed it
            async with self._uow() as tx:
                await tx.context_refs.confirm(existing.id, now())
                await tx.commit()
                return require(await tx.context_refs.get(existing.id), "context_ref", existing.id)
        ref = ContextRef(
            id=new_id("ctx"),
            nex_context_id=cmd.nex_context_id,
            nex_context_version=cmd.nex_context_version,
            labels=dict(cmd.labels),
            create_time=now(),
            confirm_time=confirmed,
        )
        async with self._uow() as tx:
            if await tx.context_refs.insert(ref, cmd.request_id):
                await tx.commit()
                return ref
            # A concurrent create won the race: answer with its result.
            winner = await tx.context_refs.find(
                request_id=cmd.request_id,
                nex_context_id=cmd.nex_context_id,
                nex_context_version=cmd.nex_context_version,
            )
            return require(winner, "context_ref", cmd.nex_context_id)

    async def _confirm(self, nex_context_id: str, nex_context_version: str) -> datetime | None:
        """Asks NEX (integrated mode) whether the context version exists; when
        NEX confirmed it, or None in standalone mode."""
        if self._checker is None:
            return None
        if not await self._checker(nex_context_id, nex_context_version):
            raise FailedPrecondition(
                f"NEX has no context {quote(nex_context_id)} "
                f"at version {quote(nex_context_version)}",
                reason="NEX_CONTEXT_NOT_FOUND",
                metadata={
                    "nex_context_id": nex_context_id,
                    "nex_context_version": nex_context_version,
                },
            )
        return now()

    async def get(self, id_: str) -> ContextRef:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return require(await tx.context_refs.get(id_), "context_ref", id_)

    async def list(
        self, *, nex_context_id: str, page_size: int, page_token: str
    ) -> tuple[Sequence[ContextRef], str]:
        return await list_page(
            self._uow,
            f"context_refs|{nex_context_id}",
            page_size,
            page_token,
            lambda tx, page: tx.context_refs.page(page, nex_context_id=nex_context_id),
        )


def usable_ref(ref: ContextRef | None, ref_id: str, *, integrated: bool) -> ContextRef:
    """The ContextRef a create names in `context_ref_id`: it must exist and, in
    integrated mode, NEX must have confirmed it (a ref made in standalone mode
    has not been)."""
    found = require(ref, "context_ref", ref_id)
    if integrated and found.confirm_time is None:
        raise FailedPrecondition(
            f"context ref {ref_id} was made in standalone mode and NEX has not confirmed "
            "it: call CreateContextRef for it again (in integrated mode it asks NEX), "
            "then retry",
            reason="CONTEXT_REF_UNCONFIRMED",
            metadata={"context_ref_id": ref_id},
        )
    return found
