from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Label,
    Select,
    Text,
    Update,
    and_,
    bindparam,
    cast,
    exists,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.answers import ANSWER_COLUMNS, TOKEN_COLUMNS, answer_columns
from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import batches, runs, workers
from nex.collector.server.domain.estimates import prompt_token_bound
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.run_transitions import (
    CANCEL_QUEUED,
    CANCEL_RUNNING,
    CLAIM,
    COMPLETE,
    FAIL,
    RELEASE,
    RETRY,
    Transition,
    ending,
)
from nex.collector.server.domain.runs import (
    AnsweredRun,
    ClaimedRun,
    LostRun,
    Run,
    RunEnding,
    RunError,
    RunStatus,
    Usage,
)
from nex.collector.server.domain.sizes import page_cut
from nex.collector.server.domain.teacher import ChatMessage, TokenLogprobs
from nex.collector.server.domain.validation import storable_text

BASIC_COLUMNS: list[ColumnElement[Any]] = [c for c in runs.c if c.name not in TOKEN_COLUMNS]
# What deciding a run's next attempt needs to know of it.
ATTEMPT_COLUMNS = (
    runs.c.id,
    runs.c.batch_id,
    runs.c.attempt,
    runs.c.teacher_failures,
    runs.c.lost_count,
)
# What a teacher's answer sets on its run, bound by name (one executemany).
_ANSWER_VALUES: dict[str, Any] = {name: bindparam(name) for name in ANSWER_COLUMNS}
# No run of a paused batch starts; the reconciler leaves its queued runs alone.
_BATCH_NOT_PAUSED = (
    ~select(batches.c.id)
    .where(batches.c.id == runs.c.batch_id, batches.c.pause_time.is_not(None))
    .exists()
)


def move(t: Transition, *where: ColumnElement[bool]) -> Update:
    """The guarded UPDATE of transition `t` (see domain/run_transitions.py): it
    touches only runs in `t.source`, among those `where` selects, and sets
    `t.target`. Every status change of a run is written through here."""
    return update(runs).where(runs.c.status == t.source.value, *where).values(status=t.target.value)


def messages_to_json(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def messages_from_json(data: Sequence[Mapping[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(m["role"], m["content"]) for m in data]


def tokens_from_row(row: Mapping[Any, Any]) -> TokenLogprobs | None:
    if row.get("token_texts") is None:
        return None
    return TokenLogprobs(
        tokens=list(row["token_texts"]),
        logprobs=list(row["token_logprobs"]),
        top_counts=list(row["top_counts"]),
        top_tokens=list(row["top_tokens"]),
        top_logprobs=list(row["top_logprobs"]),
    )


def run_from_row(row: Mapping[Any, Any]) -> Run:
    return Run(
        id=row["id"],
        batch_id=row["batch_id"],
        status=RunStatus(row["status"]),
        variables=dict(row["variables"]),
        messages=messages_from_json(row["messages"]),
        request_id=row["request_id"] or "",
        attempt=row["attempt"],
        create_time=row["create_time"],
        error=RunError(row["error_code"], row["error_message"] or "")
        if row["error_code"]
        else None,
        output_text=row["output_text"] or "",
        finish_reason=row["finish_reason"] or "",
        has_logprobs=row["has_logprobs"],
        tokens=tokens_from_row(row),
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cost_usd"]),
        latency_ms=row["latency_ms"],
        scores=dict(row["scores"]),
        start_time=row["start_time"],
        end_time=row["end_time"],
    )


def _text_bytes(column: ColumnElement[Any]) -> ColumnElement[int]:
    return func.coalesce(func.octet_length(column), 0)


def _array_bytes(column: ColumnElement[Any]) -> ColumnElement[int]:
    """Bytes of a text array's items, plus an allowance per item for its logprob
    and encoding."""
    return _text_bytes(func.array_to_string(column, "")) + 32 * func.coalesce(
        func.cardinality(column), 0
    )


def _stored_bytes(full: bool) -> Label[int]:
    """About what a run's reply weighs, measured by PostgreSQL (JSON text is at
    least the size of the strings it holds)."""
    size = (
        _text_bytes(cast(runs.c.variables, Text))
        + _text_bytes(cast(runs.c.messages, Text))
        + _text_bytes(runs.c.output_text)
        + _text_bytes(runs.c.error_message)
        + _text_bytes(cast(runs.c.scores, Text))
    )
    if full:
        size = size + _array_bytes(runs.c.token_texts) + _array_bytes(runs.c.top_tokens)
    return size.label("bytes")


class RunRepository(Repository):
    """Teacher runs; every status change goes through `move` (the guarded
    transitions of domain/run_transitions.py)."""

    table = runs

    def _select(self, full: bool) -> Select[Any]:
        return select(runs) if full else select(*BASIC_COLUMNS)

    async def get(self, id_: str, *, full: bool = True) -> Run | None:
        """The run with this id (without its output and logprobs unless `full`), or None."""
        row = await self._one(self._select(full).where(runs.c.id == id_))
        return run_from_row(row) if row else None

    async def by_request_ids(self, request_ids: Sequence[str]) -> dict[str, Run]:
        """The runs earlier creates made with these request ids, by request id
        (basic view)."""
        if not request_ids:
            return {}
        stmt = self._select(False).where(runs.c.request_id.in_(list(request_ids)))
        return {
            r.request_id: r
            for r in map(run_from_row, (await self.session.execute(stmt)).mappings())
        }

    async def insert_queued(self, items: Sequence[Run], *, via_provider: bool = False) -> set[str]:
        """Inserts queued runs; returns the ids inserted (a request id that a
        concurrent call took is skipped)."""
        if not items:
            return set()
        # One cached statement, executed as "insertmanyvalues" batches: a
        # multi-row VALUES literal would be compiled anew for every call.
        stmt = (
            insert(runs)
            .on_conflict_do_nothing(index_elements=[runs.c.request_id])
            .returning(runs.c.id)
        )
        rows = [
            {
                "id": r.id,
                "batch_id": r.batch_id,
                "status": RunStatus.QUEUED.value,
                "variables": r.variables,
                "messages": messages_to_json(r.messages),
                "request_id": r.request_id or None,
                "create_time": r.create_time,
                "prompt_tokens_bound": prompt_token_bound(r.messages),
                "via_provider": via_provider,
            }
            for r in items
        ]
        result = await self.session.execute(stmt, rows)
        return {row[0] for row in result}

    async def page(
        self, page: PageRequest, *, batch_id: str, status: RunStatus | None, full: bool
    ) -> tuple[Sequence[Run], str | None]:
        """One page in id order, cut at about PAGE_BYTES: the sizes are read
        first (PostgreSQL measures, nothing big is sent), then only the runs that
        fit are fetched, so a page of 1,000 big runs never sits in memory."""
        where = [runs.c.batch_id == batch_id]
        if status is not None:
            where.append(runs.c.status == status.value)
        if page.after is not None:
            where.append(runs.c.id > page.after)
        sized = (
            select(runs.c.id, _stored_bytes(full))
            .where(*where)
            .order_by(runs.c.id)
            .limit(page.size + 1)
        )
        measured = (await self.session.execute(sized)).all()
        more = len(measured) > page.size
        measured = measured[: page.size]
        kept = page_cut([int(row[1]) for row in measured])
        ids = [row[0] for row in measured[:kept]]
        if not ids:
            return [], None
        stmt = self._select(full).where(runs.c.id.in_(ids)).order_by(runs.c.id)
        rows = (await self.session.execute(stmt)).mappings().all()
        next_key = ids[-1] if more or kept < len(measured) else None
        return [run_from_row(r) for r in rows], next_key

    async def cancel_queued(self, batch_id: str, when: datetime) -> list[tuple[str, int]]:
        """Cancels every QUEUED run of the batch; (id, attempt) of each, for events."""
        stmt = (
            move(CANCEL_QUEUED, runs.c.batch_id == batch_id)
            .values(end_time=when)
            .returning(runs.c.id, runs.c.attempt)
        )
        return [(r[0], r[1]) for r in await self.session.execute(stmt)]

    async def merge_scores(self, id_: str, scores: Mapping[str, float]) -> bool:
        """Adds `scores` to the run's, replacing any of the same name; False when
        there is no such run."""
        stmt = (
            update(runs)
            .where(runs.c.id == id_)
            .values(
                scores=runs.c.scores.op("||")(
                    func.cast(bindparam("s", type_=runs.c.scores.type), runs.c.scores.type)
                )
            )
            .returning(runs.c.id)
        )
        return (await self.session.execute(stmt, {"s": dict(scores)})).first() is not None

    # -- the worker's hot path ---------------------------------------------------

    async def claim(
        self, ids: Sequence[str], lease: timedelta, now: datetime, worker_id: str | None = None
    ) -> list[ClaimedRun]:
        """Queued -> running for the given runs (attempt + 1, a lease, owned by
        `worker_id`); runs that are not queued (done, cancelled, taken) are
        simply absent."""
        stmt = (
            move(
                CLAIM,
                runs.c.id.in_(list(ids)),
                _BATCH_NOT_PAUSED,
                runs.c.via_provider.is_(False),
            )
            .values(
                attempt=runs.c.attempt + 1,
                start_time=func.coalesce(runs.c.start_time, now),
                lease_expires=now + lease,
                worker_id=worker_id,
            )
            .returning(
                runs.c.id,
                runs.c.batch_id,
                runs.c.attempt,
                runs.c.messages,
                runs.c.teacher_failures,
                runs.c.lost_count,
            )
        )
        return [
            ClaimedRun(id_, batch_id, attempt, messages_from_json(messages), failures, lost)
            for id_, batch_id, attempt, messages, failures, lost in await self.session.execute(stmt)
        ]

    async def lock_running(self, keys: Sequence[tuple[str, int]]) -> set[str]:
        """Locks the runs still running at the given attempt; returns their ids."""
        if not keys:
            return set()
        wanted = dict(keys)
        stmt = (
            select(runs.c.id, runs.c.attempt)
            .where(runs.c.id.in_(list(wanted)), runs.c.status == RunStatus.RUNNING.value)
            .with_for_update()
        )
        return {r[0] for r in await self.session.execute(stmt) if wanted.get(r[0]) == r[1]}

    async def finish(self, endings: Sequence[RunEnding]) -> None:
        """Writes the final state of locked running runs (one executemany)."""
        if not endings:
            return
        rows = [
            {
                "b_id": e.run_id,
                "status": ending(e.status).target.value,  # completed, failed or cancelled only
                "error_code": e.error.code if e.error else None,
                "error_message": storable_text(e.error.message) if e.error else None,
                "end_time": e.end_time,
                **answer_columns(e.answer),
            }
            for e in endings
        ]
        stmt = (
            update(runs)
            .where(runs.c.id == bindparam("b_id"), runs.c.status == COMPLETE.source.value)
            .values(
                status=bindparam("status"),
                error_code=bindparam("error_code"),
                error_message=bindparam("error_message"),
                end_time=bindparam("end_time"),
                lease_expires=None,
                **_ANSWER_VALUES,
            )
        )
        await self.session.execute(stmt, rows, execution_options={"synchronize_session": False})

    async def complete(self, ids: Sequence[str], now: datetime) -> None:
        """Running -> completed for runs whose answer is stored."""
        if not ids:
            return
        await self.session.execute(
            move(COMPLETE, runs.c.id.in_(list(ids))).values(end_time=now, lease_expires=None)
        )

    async def next_attempt(self, id_: str, attempt: int, lease: timedelta, now: datetime) -> bool:
        """Running at `attempt`, whose teacher call failed -> running at attempt + 1
        with a fresh lease, one more teacher failure counted."""
        stmt = (
            move(RETRY, runs.c.id == id_, runs.c.attempt == attempt)
            .values(
                attempt=attempt + 1,
                lease_expires=now + lease,
                teacher_failures=runs.c.teacher_failures + 1,
            )
            .returning(runs.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def release(
        self, keys: Sequence[tuple[str, int]], *, give_back_attempt: bool = False
    ) -> list[str]:
        """Running at the given attempt -> queued (its worker is stopping), the
        attempt kept, or given back when no call was made (throttled); returns
        the ids released. A run whose answer is stored stays running: the
        reconciler completes it."""
        if not keys:
            return []
        attempt = runs.c.attempt - 1 if give_back_attempt else runs.c.attempt
        stmt = (
            move(
                RELEASE,
                tuple_(runs.c.id, runs.c.attempt).in_(list(keys)),
                runs.c.answer_time.is_(None),
            )
            .values(lease_expires=None, attempt=attempt)
            .returning(runs.c.id)
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def complete_answered(
        self, keys: Sequence[tuple[str, int]], now: datetime
    ) -> list[AnsweredRun]:
        """Running at the given attempt with the answer stored -> completed (its
        worker is stopping); returns their id, batch id, attempt and cost."""
        if not keys:
            return []
        stmt = (
            move(
                COMPLETE,
                tuple_(runs.c.id, runs.c.attempt).in_(list(keys)),
                runs.c.answer_time.is_not(None),
            )
            .values(end_time=now, lease_expires=None)
            .returning(runs.c.id, runs.c.batch_id, runs.c.attempt, runs.c.cost_usd)
        )
        return [AnsweredRun(*row) for row in await self.session.execute(stmt)]

    async def unclaim(self, id_: str, attempt: int) -> bool:
        """Running at `attempt` -> queued at attempt - 1: the attempt was never
        made (its batch ran out of budget), so it is given back."""
        stmt = (
            move(RELEASE, runs.c.id == id_, runs.c.attempt == attempt)
            .values(attempt=attempt - 1, lease_expires=None)
            .returning(runs.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def queued_ids(self, batch_id: str) -> list[str]:
        """Ids of the batch's QUEUED runs."""
        stmt = select(runs.c.id).where(
            runs.c.batch_id == batch_id, runs.c.status == RunStatus.QUEUED.value
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def cancel_running(self, id_: str, attempt: int, now: datetime) -> bool:
        """Cancels the run while it is RUNNING `attempt`; False when it is not."""
        stmt = (
            move(CANCEL_RUNNING, runs.c.id == id_, runs.c.attempt == attempt)
            .values(end_time=now, lease_expires=None)
            .returning(runs.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    # -- the reconciler ----------------------------------------------------------

    async def orphaned(self, now: datetime, answered_before: datetime, limit: int) -> list[LostRun]:
        """Running runs nobody will finish: their worker's heartbeat expired (or,
        claimed with no owner, their lease did), or their answer was stored long
        ago and never marked completed."""
        owner_alive = exists().where(workers.c.id == runs.c.worker_id, workers.c.expires_at > now)
        stmt = (
            select(
                *ATTEMPT_COLUMNS,
                runs.c.answer_time,
                runs.c.cost_usd,
            )
            .where(
                runs.c.status == RunStatus.RUNNING.value,
                or_(
                    and_(runs.c.worker_id.is_(None), runs.c.lease_expires < now),
                    and_(runs.c.worker_id.is_not(None), ~owner_alive),
                    runs.c.answer_time < answered_before,
                ),
            )
            .order_by(runs.c.id)
            .limit(limit)
            .with_for_update(of=runs, skip_locked=True)
        )
        return [LostRun(*row) for row in await self.session.execute(stmt)]

    async def requeue_lost(self, ids: Sequence[str]) -> None:
        """Running -> queued after their worker died: one more loss counted."""
        await self.session.execute(
            move(RELEASE, runs.c.id.in_(list(ids))).values(
                lease_expires=None,
                worker_id=None,
                lost_count=runs.c.lost_count + 1,
            )
        )

    async def fail_many(
        self, ids: Sequence[str], code: str, message: str, now: datetime, *, lost: bool = False
    ) -> None:
        """Running -> failed; `lost`: their worker died once more."""
        await self.session.execute(
            move(FAIL, runs.c.id.in_(list(ids))).values(
                lost_count=runs.c.lost_count + (1 if lost else 0),
                error_code=code,
                error_message=message,
                end_time=now,
                lease_expires=None,
            )
        )

    async def stale_queued(self, older_than: datetime, limit: int) -> list[str]:
        """Online runs QUEUED since before `older_than` in batches not paused:
        their job may be lost, so the reconciler enqueues them again."""
        stmt = (
            select(runs.c.id)
            .where(
                runs.c.status == RunStatus.QUEUED.value,
                runs.c.create_time < older_than,
                _BATCH_NOT_PAUSED,
                runs.c.via_provider.is_(False),
            )
            .order_by(runs.c.id)
            .limit(limit)
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def count_by_status(self, statuses: Sequence[RunStatus]) -> dict[RunStatus, int]:
        """Runs per status, over every batch (each of ``statuses``, 0 when none)."""
        stmt = (
            select(runs.c.status, func.count())
            .where(runs.c.status.in_([s.value for s in statuses]))
            .group_by(runs.c.status)
        )
        found = {RunStatus(r[0]): int(r[1]) for r in await self.session.execute(stmt)}
        return {s: found.get(s, 0) for s in statuses}

    async def active_count(self, batch_id: str) -> int:
        """How many of the batch's runs are QUEUED or RUNNING."""
        stmt = select(func.count()).where(
            runs.c.batch_id == batch_id,
            runs.c.status.in_([RunStatus.QUEUED.value, RunStatus.RUNNING.value]),
        )
        return int((await self.session.execute(stmt)).scalar_one())

    async def status_of(self, id_: str) -> RunStatus | None:
        """The run's status alone, or None when there is no such run."""
        value = (await self.session.execute(select(runs.c.status).where(runs.c.id == id_))).scalar()
        return RunStatus(value) if value else None
