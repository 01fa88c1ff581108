"""The unit of work: one AsyncSession (one transaction) per RPC or task, with
every repository bound to it."""

from __future__ import annotations

from types import TracebackType

import asyncpg
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from nex.collector.server.db.repositories.batches import BatchRepository
from nex.collector.server.db.repositories.budgets import BudgetRepository
from nex.collector.server.db.repositories.context_refs import ContextRefRepository
from nex.collector.server.db.repositories.datasets import DatasetRepository
from nex.collector.server.db.repositories.events import EventRepository
from nex.collector.server.db.repositories.evidence import EvidenceRepository
from nex.collector.server.db.repositories.provider_jobs import ProviderJobRepository
from nex.collector.server.db.repositories.runs import RunRepository
from nex.collector.server.db.repositories.templates import TemplateRepository
from nex.collector.server.db.repositories.workers import WorkerRepository
from nex.collector.server.domain.errors import Unavailable

# What a read through a unit of work raises while PostgreSQL cannot be reached
# (it restarts, the network is down), for callers that wait and read again.
DB_DOWN = (OSError, TimeoutError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError)

# PostgreSQL's answers for two transactions that got in each other's way
# (deadlock_detected, serialization_failure): the one it broke may simply retry.
_CONFLICTS = frozenset({"40P01", "40001"})


def _conflict(exc: BaseException | None) -> bool:
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return False
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    cause = exc.orig.__cause__
    return code in _CONFLICTS or getattr(cause, "sqlstate", None) in _CONFLICTS


class UnitOfWork:
    session: AsyncSession
    context_refs: ContextRefRepository
    templates: TemplateRepository
    batches: BatchRepository
    budgets: BudgetRepository
    runs: RunRepository
    events: EventRepository
    datasets: DatasetRepository
    evidence: EvidenceRepository
    workers: WorkerRepository
    provider_jobs: ProviderJobRepository

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def __aenter__(self) -> UnitOfWork:
        self.session = self._sessions()
        self.context_refs = ContextRefRepository(self.session)
        self.templates = TemplateRepository(self.session)
        self.batches = BatchRepository(self.session)
        self.budgets = BudgetRepository(self.session)
        self.runs = RunRepository(self.session)
        self.events = EventRepository(self.session)
        self.datasets = DatasetRepository(self.session)
        self.evidence = EvidenceRepository(self.session)
        self.workers = WorkerRepository(self.session)
        self.provider_jobs = ProviderJobRepository(self.session)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is not None:
                await self.session.rollback()
        finally:
            await self.session.close()
        if _conflict(exc):
            # A caller's retry succeeds; it is never the caller's fault (INTERNAL).
            raise Unavailable(
                "this call collided with concurrent work on the same rows and was rolled "
                "back; retry it",
                reason="TRANSACTION_CONFLICT",
                retry_after_s=0.1,
            ) from exc

    async def commit(self) -> None:
        await self.session.commit()

    async def rollback(self) -> None:
        await self.session.rollback()


class UnitOfWorkFactory:
    """Makes a fresh UnitOfWork per use: `async with uow() as tx: …`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self.sessions)
