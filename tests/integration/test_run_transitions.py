"""The run state machine, checked against a real PostgreSQL: any sequence of the
repositories' status changes, applied to one run, moves it exactly as the table
in domain/run_transitions.py says. A change whose source status the run is not
in leaves it untouched; a final status is never left."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from nex.collector.server.db.migrate import upgrade_to_head
from nex.collector.server.db.repositories.runs import RunRepository
from nex.collector.server.db.tables import batches, runs, templates
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain import run_transitions as rt
from nex.collector.server.domain.runs import RunStatus
from tests.support.backing import Backing

BATCH = "bat_transitions"
LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Op:
    """One repository call that may change a run's status, with the transition
    it is built from and the attempt it leaves when it applies."""

    name: str
    transition: rt.Transition
    call: Callable[[RunRepository, str, int, datetime], Awaitable[object]]
    attempt: Callable[[int], int] = lambda a: a


OPS = [
    Op("claim", rt.CLAIM, lambda r, i, a, t: r.claim([i], LEASE, t), lambda a: a + 1),
    Op(
        "next_attempt",
        rt.RETRY,
        lambda r, i, a, t: r.next_attempt(i, a, LEASE, t),
        lambda a: a + 1,
    ),
    Op("release", rt.RELEASE, lambda r, i, a, t: r.release([(i, a)])),
    Op("unclaim", rt.RELEASE, lambda r, i, a, t: r.unclaim(i, a), lambda a: a - 1),
    Op("requeue_lost", rt.RELEASE, lambda r, i, a, t: r.requeue_lost([i])),
    Op("complete", rt.COMPLETE, lambda r, i, a, t: r.complete([i], t)),
    Op("fail_many", rt.FAIL, lambda r, i, a, t: r.fail_many([i], "X", "x", t)),
    Op("cancel_running", rt.CANCEL_RUNNING, lambda r, i, a, t: r.cancel_running(i, a, t)),
    Op("cancel_queued", rt.CANCEL_QUEUED, lambda r, i, a, t: r.cancel_queued(BATCH, t)),
]


def test_every_status_is_reachable_and_final_ones_are_never_left() -> None:
    reached = {RunStatus.QUEUED}
    for _ in rt.TRANSITIONS:
        reached |= {t.target for t in rt.TRANSITIONS if t.source in reached}
    assert reached == set(RunStatus)
    assert not [t for t in rt.TRANSITIONS if t.source.terminal]
    assert {t.transition for t in OPS} == set(rt.TRANSITIONS) - {rt.SUBMIT}  # provider jobs
    for status in RunStatus:
        if status.terminal:
            assert rt.ending(status).target is status
        else:
            with pytest.raises(rt.IllegalTransition):
                rt.ending(status)


@pytest.fixture(scope="module")
def database(backing: Backing) -> Iterator[tuple[asyncio.AbstractEventLoop, UnitOfWorkFactory]]:
    loop = asyncio.new_event_loop()
    with backing.isolated() as own:
        engine = create_async_engine(own.database_url)

        async def setup() -> UnitOfWorkFactory:
            await upgrade_to_head(engine)
            uow = UnitOfWorkFactory(async_sessionmaker(engine, expire_on_commit=False))
            async with uow() as tx:
                await tx.session.execute(
                    insert(templates).values(
                        id="tpl_t",
                        name="t",
                        version=1,
                        system_template="",
                        user_template="x",
                        variables=[],
                    )
                )
                await tx.session.execute(
                    insert(batches).values(
                        id=BATCH,
                        name="b",
                        template_id="tpl_t",
                        provider="mock",
                        model="m",
                        params={},
                        labels={},
                    )
                )
                await tx.commit()
            return uow

        try:
            yield loop, loop.run_until_complete(setup())
        finally:
            loop.run_until_complete(engine.dispose())
            loop.close()


_ids = itertools.count()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(OPS), max_size=12))
def test_any_sequence_of_changes_follows_the_table(
    database: tuple[asyncio.AbstractEventLoop, UnitOfWorkFactory], ops: list[Op]
) -> None:
    loop, uow = database
    run_id = f"run_t{next(_ids)}"

    async def walk() -> None:
        async with uow() as tx:
            await tx.session.execute(
                insert(runs).values(
                    id=run_id, batch_id=BATCH, status="queued", variables={}, messages=[]
                )
            )
            await tx.commit()
        status, attempt = RunStatus.QUEUED, 0
        for op in ops:
            async with uow() as tx:
                await op.call(tx.runs, run_id, attempt, datetime.now(UTC))
                await tx.commit()
            if op.transition.source is status:
                status, attempt = op.transition.target, op.attempt(attempt)
            async with uow() as tx:
                row = (
                    await tx.session.execute(
                        select(runs.c.status, runs.c.attempt).where(runs.c.id == run_id)
                    )
                ).one()
            assert (RunStatus(row[0]), row[1]) == (status, attempt), (op.name, ops)

    loop.run_until_complete(walk())
