"""The run event log: every status change, in revision order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import RowMapping, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from nex.collector.server.db.locks import EVENTS_LOCK
from nex.collector.server.db.tables import run_events
from nex.collector.server.domain.runs import RunError, RunEvent, RunStatus

NOTIFY_CHANNEL = "nex_run_events"

# All the events of a transaction in one statement, one array per column: an
# executemany would run the INSERT once per event (a Bind/Execute each, and the
# executor set up each time). Revisions follow the list's order (ORDER BY the
# position: the sequence's defaults are drawn after the sort).
_APPEND = text(
    f"INSERT INTO {run_events.name} (run_id, batch_id, status, attempt, error_code, error_message)"
    " SELECT run_id, batch_id, status, attempt, error_code, error_message FROM unnest("
    "CAST(:run_ids AS text[]), CAST(:batch_ids AS text[]), CAST(:statuses AS text[]),"
    " CAST(:attempts AS integer[]), CAST(:codes AS text[]), CAST(:messages AS text[]))"
    " WITH ORDINALITY AS e(run_id, batch_id, status, attempt, error_code, error_message, n)"
    " ORDER BY n"
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A run's status change, to append to the event log."""

    run_id: str
    batch_id: str
    status: RunStatus
    attempt: int
    error: RunError | None = None


def _entity(row: RowMapping) -> RunEvent:
    return RunEvent(
        revision=row["revision"],
        run_id=row["run_id"],
        batch_id=row["batch_id"],
        status=RunStatus(row["status"]),
        attempt=row["attempt"],
        error=RunError(row["error_code"], row["error_message"] or "")
        if row["error_code"]
        else None,
        time=row["time"],
    )


class EventRepository:
    """The run event log: watchers replay it by revision and follow its notifications."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def append(self, events: Sequence[NewEvent]) -> None:
        """Appends events and wakes watchers; call it last, right before commit."""
        if not events:
            return
        await self.session.execute(text(f"SELECT pg_advisory_xact_lock({EVENTS_LOCK})"))
        await self.session.execute(
            _APPEND,
            {
                "run_ids": [e.run_id for e in events],
                "batch_ids": [e.batch_id for e in events],
                "statuses": [e.status.value for e in events],
                "attempts": [e.attempt for e in events],
                "codes": [e.error.code if e.error else None for e in events],
                "messages": [e.error.message if e.error else None for e in events],
            },
        )
        for batch_id in sorted({e.batch_id for e in events}):
            await self.session.execute(select(func.pg_notify(NOTIFY_CHANNEL, batch_id)))

    async def last_revision(self) -> int:
        """The largest committed revision (0: none). Every event committed later
        has a larger one (see EVENTS_LOCK)."""
        stmt = select(func.coalesce(func.max(run_events.c.revision), 0))
        return int((await self.session.execute(stmt)).scalar_one())

    async def after(
        self, *, revision: int, batch_id: str = "", run_id: str = "", limit: int = 1000
    ) -> list[RunEvent]:
        """Up to `limit` events after `revision`, of one run when `run_id` is set,
        else of one batch, in revision order."""
        stmt = select(run_events).where(run_events.c.revision > revision)
        if run_id:
            stmt = stmt.where(run_events.c.run_id == run_id)
        else:
            stmt = stmt.where(run_events.c.batch_id == batch_id)
        stmt = stmt.order_by(run_events.c.revision).limit(limit)
        return [_entity(r) for r in (await self.session.execute(stmt)).mappings()]
