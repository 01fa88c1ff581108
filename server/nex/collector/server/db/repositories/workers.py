"""Worker heartbeats: which worker processes are alive."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import workers


class WorkerRepository(Repository):
    """Worker heartbeats: which worker processes are alive."""

    table = workers

    async def beat(self, worker_id: str, expires_at: datetime) -> None:
        """Registers the worker, or extends its life to `expires_at`."""
        stmt = insert(workers).values(id=worker_id, expires_at=expires_at)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[workers.c.id], set_={"expires_at": stmt.excluded.expires_at}
            )
        )

    async def remove(self, worker_id: str) -> None:
        """Forgets the worker at once (it stopped cleanly)."""
        await self.session.execute(delete(workers).where(workers.c.id == worker_id))

    async def live(self, now: datetime) -> set[str]:
        """Ids of the workers whose heartbeat has not expired at `now`."""
        stmt = select(workers.c.id).where(workers.c.expires_at > now)
        return {r[0] for r in await self.session.execute(stmt)}

    async def prune(self, expired_before: datetime) -> None:
        """Forgets workers long dead (their runs were taken back long ago)."""
        await self.session.execute(delete(workers).where(workers.c.expires_at < expired_before))
