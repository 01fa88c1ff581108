"""Money per scope, and the reservations that run attempts hold in it.

Lock order, shared by every writer so that no two transactions deadlock: run
rows first, then budget rows in scope order, then the event log's lock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Integer, Text, bindparam, delete, func, literal, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY, insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import batches, budget_reservations, budgets, runs
from nex.collector.server.domain.budgets import Budget
from nex.collector.server.domain.runs import ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class Hold:
    """What one run attempt asks to reserve in one scope. `cap` (when given)
    is written to the scope first: caps that live outside the database, such
    as a teacher's daily cap from the teachers file."""

    scope: str
    amount_usd: float
    cap: float | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """A run attempt's result: its real cost counts in `scope` (its batch) and
    in every scope it reserved in, and its reservations end."""

    run_id: str
    attempt: int
    scope: str
    cost_usd: float


class BudgetRepository(Repository):
    """Cost caps and what is spent and reserved against them, per scope."""

    table = budgets

    async def get(self, scope: str) -> Budget | None:
        """The budget of `scope` (a batch, or a teacher on one day), or None."""
        row = await self._one(select(budgets).where(budgets.c.scope == scope))
        return Budget(row["max_cost_usd"], row["spent_usd"], row["reserved_usd"]) if row else None

    async def left_of_active_batches(self) -> dict[str, float]:
        """Batch id -> USD left under its cap, for capped batches with runs
        queued or running."""
        active = (
            select(runs.c.batch_id)
            .where(runs.c.status.in_([s.value for s in ACTIVE_STATUSES]))
            .distinct()
            .subquery()
        )
        stmt = select(
            active.c.batch_id,
            budgets.c.max_cost_usd - budgets.c.spent_usd - budgets.c.reserved_usd,
        ).join(
            budgets,
            (budgets.c.scope == func.concat("batch:", active.c.batch_id))
            & budgets.c.max_cost_usd.is_not(None),
        )
        return {r[0]: max(float(r[1]), 0.0) for r in await self.session.execute(stmt)}

    async def set_cap(self, scope: str, cap: float | None) -> Budget:
        """Sets the cap; returns the budget as it was before."""
        await self.session.execute(insert(budgets).values(scope=scope).on_conflict_do_nothing())
        row = await self._one(select(budgets).where(budgets.c.scope == scope).with_for_update())
        assert row is not None
        await self.session.execute(
            update(budgets).where(budgets.c.scope == scope).values(max_cost_usd=cap)
        )
        return Budget(row["max_cost_usd"], row["spent_usd"], row["reserved_usd"])

    async def reserve(
        self, run_id: str, attempt: int, holds: Sequence[Hold], *, batch_id: str
    ) -> str | None:
        """Reserves every hold, or returns the first scope that cannot take its
        amount (the caller then rolls back). A paused batch takes nothing."""
        for hold in sorted(holds, key=lambda h: h.scope):
            if hold.cap is not None:
                await self.session.execute(
                    insert(budgets)
                    .values(scope=hold.scope, max_cost_usd=hold.cap)
                    .on_conflict_do_update(
                        index_elements=[budgets.c.scope], set_={"max_cost_usd": hold.cap}
                    )
                )
            stmt = (
                update(budgets)
                .where(
                    budgets.c.scope == hold.scope,
                    budgets.c.max_cost_usd.is_(None)
                    | (
                        budgets.c.spent_usd + budgets.c.reserved_usd + hold.amount_usd
                        <= budgets.c.max_cost_usd
                    ),
                    ~select(batches.c.id)
                    .where(batches.c.id == batch_id, batches.c.pause_time.is_not(None))
                    .exists(),
                )
                .values(reserved_usd=budgets.c.reserved_usd + hold.amount_usd)
                .returning(budgets.c.scope)
            )
            if (await self.session.execute(stmt)).first() is None:
                return hold.scope
        await self.session.execute(
            insert(budget_reservations),
            [
                {"run_id": run_id, "attempt": attempt, "scope": h.scope, "amount_usd": h.amount_usd}
                for h in holds
            ],
        )
        return None

    async def settle(self, items: Sequence[Settlement], *, reserved: bool = True) -> None:
        """Real costs in, reservations out (with the run rows already locked).
        `reserved=False` skips looking for reservations none of them holds."""
        if not items:
            return
        taken = await self._take([(s.run_id, s.attempt) for s in items]) if reserved else []
        scopes_of: dict[tuple[str, int], set[str]] = defaultdict(set)
        spent: dict[str, float] = defaultdict(float)
        freed: dict[str, float] = defaultdict(float)
        for run_id, attempt, scope, amount in taken:
            scopes_of[(run_id, attempt)].add(scope)
            freed[scope] += amount
        for s in items:
            for scope in scopes_of[(s.run_id, s.attempt)] | {s.scope}:
                spent[scope] += s.cost_usd
        await self._apply(spent, freed)

    async def release(self, keys: Sequence[tuple[str, int]]) -> None:
        """Ends reservations without spending (the call failed: providers do not
        bill errors)."""
        freed: dict[str, float] = defaultdict(float)
        for _, _, scope, amount in await self._take(keys):
            freed[scope] += amount
        await self._apply({}, freed)

    async def charge(self, keys: Sequence[tuple[str, int]]) -> None:
        """Turns reservations into spend at their worst case: the worker holding
        them was lost or stopped mid-call, and the provider may have billed it."""
        moved: dict[str, float] = defaultdict(float)
        for _, _, scope, amount in await self._take(keys):
            moved[scope] += amount
        await self._apply(moved, moved)

    async def _take(self, keys: Sequence[tuple[str, int]]) -> list[tuple[str, int, str, float]]:
        if not keys:
            return []
        # The keys as two arrays, unnested side by side: two parameters however
        # many keys (a provider job that fails whole settles up to 100,000
        # runs; an IN list of pairs takes two parameters a key, and asyncpg
        # refuses more than 32,767, PostgreSQL's stack thousands of pairs).
        wanted = select(
            func.unnest(literal([k[0] for k in keys], ARRAY(Text))),
            func.unnest(literal([k[1] for k in keys], ARRAY(Integer))),
        )
        stmt = (
            delete(budget_reservations)
            .where(tuple_(budget_reservations.c.run_id, budget_reservations.c.attempt).in_(wanted))
            .returning(
                budget_reservations.c.run_id,
                budget_reservations.c.attempt,
                budget_reservations.c.scope,
                budget_reservations.c.amount_usd,
            )
        )
        return [(r[0], r[1], r[2], r[3]) for r in await self.session.execute(stmt)]

    async def _apply(self, spent: Mapping[str, float], freed: Mapping[str, float]) -> None:
        scopes = sorted(set(spent) | set(freed))
        if not scopes:
            return
        stmt = (
            update(budgets)
            .where(budgets.c.scope == bindparam("b_scope"))
            .values(
                spent_usd=budgets.c.spent_usd + bindparam("b_spent"),
                reserved_usd=func.greatest(budgets.c.reserved_usd - bindparam("b_freed"), 0.0),
            )
        )
        await self.session.execute(
            stmt,
            [
                {"b_scope": s, "b_spent": spent.get(s, 0.0), "b_freed": freed.get(s, 0.0)}
                for s in scopes
            ],
            execution_options={"synchronize_session": False},
        )
