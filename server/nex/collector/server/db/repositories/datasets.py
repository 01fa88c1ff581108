from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from json.scanner import make_scanner
from typing import Any, cast

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert

from nex.collector.server.db.repositories.base import Repository
from nex.collector.server.db.tables import batches, dataset_parts, datasets, runs, templates
from nex.collector.server.domain.datasets import (
    PART_DONE,
    PART_PENDING,
    BatchSource,
    Dataset,
    DatasetCounts,
    DatasetFile,
    DatasetPart,
    DatasetStatus,
    FilterDrop,
)
from nex.collector.server.domain.filters import filter_from_dict, filter_to_dict
from nex.collector.server.domain.pagination import PageRequest
from nex.collector.server.domain.runs import RunError, RunStatus
from nex.collector.server.domain.teacher import (
    TOKEN_SEPARATOR,
    ChatMessage,
    CompletedRun,
    PackedStrings,
    TokenLogprobs,
)

_SEPARATOR_SQL = f"chr({ord(TOKEN_SEPARATOR)})"


def _entity(row: Mapping[Any, Any]) -> Dataset:
    counts = row["counts"] or {}
    return Dataset(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        status=DatasetStatus(row["status"]),
        uri=row["uri"],
        batch_ids=tuple(row["batch_ids"]),
        filters=tuple(filter_from_dict(f) for f in row["filters"]),
        create_time=row["create_time"],
        files=tuple(DatasetFile(**f) for f in row["files"]),
        counts=DatasetCounts(
            total=counts.get("total", 0),
            kept=counts.get("kept", 0),
            dropped=tuple(FilterDrop(**d) for d in counts.get("dropped", [])),
        ),
        error=RunError(row["error_code"], row["error_message"] or "")
        if row["error_code"]
        else None,
        context_ref_id=row["context_ref_id"],
        link_evidence=row["link_evidence"],
        allow_empty=row["allow_empty"],
        ready_time=row["ready_time"],
        parts=row["parts"],
    )


def _part(row: Mapping[Any, Any]) -> DatasetPart:
    counts = row["counts"] or {}
    return DatasetPart(
        dataset_id=row["dataset_id"],
        part=row["part"],
        first_run_id=row["first_run_id"],
        end_run_id=row["end_run_id"],
        status=row["status"],
        lease_expires=row["lease_expires"],
        worker_id=row["worker_id"],
        files=tuple(DatasetFile(**f) for f in row["files"]),
        counts=DatasetCounts(
            total=counts.get("total", 0),
            kept=counts.get("kept", 0),
            dropped=tuple(FilterDrop(**d) for d in counts.get("dropped", [])),
        ),
    )


def _counts_json(c: DatasetCounts) -> dict[str, Any]:
    return {
        "total": c.total,
        "kept": c.kept,
        "dropped": [
            {"index": d.index, "filter": d.filter, "dropped": d.dropped} for d in c.dropped
        ],
    }


class DatasetRepository(Repository):
    """Dataset manifests, their build leases and their parts."""

    table = datasets

    async def get(self, id_: str) -> Dataset | None:
        """The dataset with this id, or None."""
        row = await self._one(select(datasets).where(datasets.c.id == id_))
        return _entity(row) if row else None

    async def find(
        self, *, request_id: str = "", name: str = "", version: str = ""
    ) -> Dataset | None:
        """By request id, else by (name, version) among builds that did not fail
        (a failed build leaves its version free)."""
        if request_id:
            row = await self._one(select(datasets).where(datasets.c.request_id == request_id))
            if row:
                return _entity(row)
        if name:
            row = await self._one(  # a failed build leaves its version free
                select(datasets).where(
                    datasets.c.name == name,
                    datasets.c.version == version,
                    datasets.c.status != DatasetStatus.FAILED.value,
                )
            )
            if row:
                return _entity(row)
        return None

    async def insert(self, d: Dataset, request_id: str) -> bool:
        """Stores a new BUILDING dataset; False when a concurrent build won (same
        request id, or name and version)."""
        stmt = (
            insert(datasets)
            .values(
                id=d.id,
                name=d.name,
                version=d.version,
                status=d.status.value,
                uri=d.uri,
                batch_ids=list(d.batch_ids),
                filters=[filter_to_dict(f) for f in d.filters],
                context_ref_id=d.context_ref_id,
                link_evidence=d.link_evidence,
                allow_empty=d.allow_empty,
                parts=d.parts,
                request_id=request_id or None,
                create_time=d.create_time,
            )
            .on_conflict_do_nothing()
            .returning(datasets.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def page(
        self, page: PageRequest, *, name: str = ""
    ) -> tuple[Sequence[Dataset], str | None]:
        """One page in id order, of one name's datasets when named."""
        stmt = select(datasets)
        if name:
            stmt = stmt.where(datasets.c.name == name)
        rows, next_key = await self._page(stmt, page, datasets.c.id)
        return [_entity(r) for r in rows], next_key

    async def claim(self, id_: str, lease: timedelta, now: datetime) -> bool:
        """Takes the build lease of a BUILDING dataset nobody (alive) builds."""
        stmt = (
            update(datasets)
            .where(
                datasets.c.id == id_,
                datasets.c.status == DatasetStatus.BUILDING.value,
                or_(datasets.c.lease_expires.is_(None), datasets.c.lease_expires < now),
            )
            .values(lease_expires=now + lease)
            .returning(datasets.c.id)
        )
        return (await self.session.execute(stmt)).first() is not None

    async def renew(self, id_: str, lease: timedelta, now: datetime) -> None:
        """Extends the build lease to `now + lease` (a zero lease gives it up)."""
        await self.session.execute(
            update(datasets).where(datasets.c.id == id_).values(lease_expires=now + lease)
        )

    async def finish(
        self,
        id_: str,
        *,
        status: DatasetStatus,
        now: datetime,
        files: Sequence[DatasetFile] = (),
        counts: DatasetCounts | None = None,
        error: RunError | None = None,
    ) -> None:
        """Ends a BUILDING dataset as `status`, with its files and counts when READY
        or its error; a dataset no longer BUILDING is left as it is."""
        values: dict[str, Any] = {"status": status.value, "lease_expires": None}
        if status is DatasetStatus.READY:
            values["ready_time"] = now
            values["files"] = [
                {"name": f.name, "sha256": f.sha256, "rows": f.rows, "bytes": f.bytes}
                for f in files
            ]
            c = counts or DatasetCounts()
            values["counts"] = {
                "total": c.total,
                "kept": c.kept,
                "dropped": [
                    {"index": d.index, "filter": d.filter, "dropped": d.dropped} for d in c.dropped
                ],
            }
        if error is not None:
            values["error_code"], values["error_message"] = error.code, error.message
        await self.session.execute(
            update(datasets)
            .where(datasets.c.id == id_, datasets.c.status == DatasetStatus.BUILDING.value)
            .values(**values)
        )

    # -- builds in parts ---------------------------------------------------------

    async def lock(self, id_: str) -> None:
        """Locks the dataset's row until the transaction ends (serialises the
        parts' "am I the last one" checks)."""
        await self.session.execute(
            select(datasets.c.id).where(datasets.c.id == id_).with_for_update()
        )

    async def part_bounds(self, batch_ids: Sequence[str], parts: int) -> list[str | None]:
        """The first run id of parts 1..parts-1 when the completed runs of the
        batches (in id order) are split into `parts` runs of (nearly) equal size;
        None for a part that would hold no run."""
        where = (runs.c.batch_id.in_(list(batch_ids)), runs.c.status == RunStatus.COMPLETED.value)
        n = int((await self.session.execute(select(func.count()).where(*where))).scalar_one())
        bounds: list[str | None] = []
        for i in range(1, parts):
            rank = i * n // parts
            row = (
                await self.session.execute(
                    select(runs.c.id).where(*where).order_by(runs.c.id).offset(rank).limit(1)
                )
            ).first()
            bounds.append(row[0] if row else None)
        return bounds

    async def plan_parts(self, id_: str, bounds: Sequence[str | None]) -> None:
        """Records the parts (once: a second plan of the same dataset is ignored)."""
        edges = [None, *bounds, None]
        rows = []
        for i in range(len(bounds) + 1):
            first, end = edges[i], edges[i + 1]
            if i > 0 and first is None:  # no run from here on: an empty part
                first = end = ""
            rows.append(
                {
                    "dataset_id": id_,
                    "part": i,
                    "first_run_id": first,
                    "end_run_id": end,
                    "status": PART_PENDING,
                }
            )
        await self.session.execute(insert(dataset_parts).values(rows).on_conflict_do_nothing())

    async def parts(self, id_: str) -> list[DatasetPart]:
        """The planned parts of the dataset, in part order."""
        stmt = select(dataset_parts).where(dataset_parts.c.dataset_id == id_)
        rows = (await self.session.execute(stmt.order_by(dataset_parts.c.part))).mappings()
        return [_part(r) for r in rows]

    async def claim_part(
        self, id_: str, part: int, lease: timedelta, now: datetime, worker_id: str
    ) -> DatasetPart | None:
        """Takes the lease of a pending part nobody (alive) builds."""
        stmt = (
            update(dataset_parts)
            .where(
                dataset_parts.c.dataset_id == id_,
                dataset_parts.c.part == part,
                dataset_parts.c.status == PART_PENDING,
                or_(dataset_parts.c.lease_expires.is_(None), dataset_parts.c.lease_expires < now),
            )
            .values(lease_expires=now + lease, worker_id=worker_id)
            .returning(*dataset_parts.c)
        )
        row = (await self.session.execute(stmt)).mappings().first()
        return _part(row) if row else None

    async def renew_part(self, id_: str, part: int, lease: timedelta, now: datetime) -> None:
        """Extends the lease of one part's builder to `now + lease`."""
        await self.session.execute(
            update(dataset_parts)
            .where(dataset_parts.c.dataset_id == id_, dataset_parts.c.part == part)
            .values(lease_expires=now + lease)
        )

    async def finish_part(
        self, id_: str, part: int, files: Sequence[DatasetFile], counts: DatasetCounts
    ) -> None:
        """Records a pending part's files and counts and marks it done."""
        await self.session.execute(
            update(dataset_parts)
            .where(
                dataset_parts.c.dataset_id == id_,
                dataset_parts.c.part == part,
                dataset_parts.c.status == PART_PENDING,
            )
            .values(
                status=PART_DONE,
                lease_expires=None,
                files=[
                    {"name": f.name, "sha256": f.sha256, "rows": f.rows, "bytes": f.bytes}
                    for f in files
                ],
                counts=_counts_json(counts),
            )
        )

    async def count_building(self) -> int:
        """How many datasets are BUILDING (the build backlog)."""
        stmt = select(func.count()).where(datasets.c.status == DatasetStatus.BUILDING.value)
        return int((await self.session.execute(stmt)).scalar_one())

    async def building_versions(self, now: datetime) -> list[tuple[str, str]]:
        """(name, version) of every BUILDING dataset (their staging is live or
        will be cleaned by their next attempt)."""
        stmt = select(datasets.c.name, datasets.c.version).where(
            datasets.c.status == DatasetStatus.BUILDING.value
        )
        return [(r[0], r[1]) for r in await self.session.execute(stmt)]

    async def stale_builds(self, now: datetime, grace: timedelta) -> list[str]:
        """BUILDING datasets whose builder's lease ran out, or that no worker took."""
        stmt = select(datasets.c.id).where(
            datasets.c.status == DatasetStatus.BUILDING.value,
            or_(
                datasets.c.lease_expires < now,
                (datasets.c.lease_expires.is_(None)) & (datasets.c.create_time < now - grace),
            ),
        )
        return [r[0] for r in await self.session.execute(stmt)]

    async def sources(self, batch_ids: Sequence[str]) -> dict[str, BatchSource]:
        """Per batch: its template (id, version) and teacher (provider, model, params)."""
        stmt = (
            select(
                batches.c.id,
                batches.c.provider,
                batches.c.model,
                batches.c.params,
                batches.c.template_id,
                templates.c.version,
                templates.c.name,
            )
            .join(templates, templates.c.id == batches.c.template_id)
            .where(batches.c.id.in_(list(batch_ids)))
        )
        return {
            r["id"]: BatchSource(
                provider=r["provider"],
                model=r["model"],
                params=r["params"],
                template_id=r["template_id"],
                template_name=r["name"],
                template_version=r["version"],
            )
            for r in (await self.session.execute(stmt)).mappings()
        }

    async def completed_runs(
        self,
        batch_ids: Sequence[str],
        sources: Mapping[str, BatchSource],
        *,
        chunk: int = 1000,
        first_run_id: str | None = None,
        end_run_id: str | None = None,
    ) -> AsyncIterator[list[CompletedRun]]:
        """The completed runs of the batches in id order, streamed through a
        server-side cursor `chunk` rows at a time (memory stays flat).

        Reads through the session's asyncpg connection directly: SQLAlchemy's
        per-row result processing (mappings, per-element ARRAY processors)
        costs several times the decoding itself on rows of ~800 array elements."""
        connection = await self.session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        # A transaction for the cursor (a savepoint if the session has one open).
        async with driver.transaction():
            query, args = _COMPLETED_RUNS, [list(batch_ids), RunStatus.COMPLETED.value]
            if first_run_id is not None:
                query, args = (
                    query.replace(" ORDER BY", " AND id >= $3 ORDER BY"),
                    [*args, first_run_id],
                )
            if end_run_id is not None:
                n = len(args) + 1
                query, args = (
                    query.replace(" ORDER BY", f" AND id < ${n} ORDER BY"),
                    [*args, end_run_id],
                )
            cursor = await driver.cursor(query, *args)
            while rows := await cursor.fetch(chunk):
                # Token texts arrive joined (see _COMPLETED_RUNS); the rare run with
                # a separator inside a token is read again as arrays.
                redo = [r[0] for r in rows if not _packs(r)]
                unpacked = (
                    {t[0]: (t[1], t[2]) for t in await driver.fetch(_TEXTS, redo)} if redo else {}
                )
                yield [_completed_run(r, sources[r[1]], unpacked.get(r[0])) for r in rows]


# The columns (in this order) _completed_run reads. jsonb comes as text, parsed
# by _json: the JSON codec SQLAlchemy registers on its asyncpg connections
# (json.loads behind two Python layers) costs more per run than the arrays.
# Token texts come joined into one string per run (PackedStrings): decoding
# ~400 strings per run into Python objects, then into Arrow, was the largest
# cost of a build; joined, they go to Arrow in one split.
_COMPLETED_RUNS = (
    "SELECT id, batch_id, variables::text, messages::text, output_text, finish_reason,"
    f" array_to_string(token_texts, {_SEPARATOR_SQL}), token_logprobs, top_counts,"
    f" array_to_string(top_tokens, {_SEPARATOR_SQL}), top_logprobs,"
    " input_tokens, output_tokens, latency_ms, scores::text"
    " FROM runs WHERE batch_id = ANY($1::text[]) AND status = $2 ORDER BY id"
)
_TEXTS = "SELECT id, token_texts, top_tokens FROM runs WHERE id = ANY($1::text[])"


def _packs(r: Sequence[Any]) -> bool:
    """Whether a row's joined token texts split back into its arrays."""
    if r[6] is None:
        return True
    if r[7] is None or r[9] is None or r[10] is None:
        return False  # malformed: the arrays as stored, for the builder to reject
    return PackedStrings.fits(r[6], len(r[7])) and PackedStrings.fits(r[9], len(r[10]))


_scan_json = make_scanner(cast(Any, json.JSONDecoder()))  # typeshed types the context oddly


def _json(text: str) -> Any:
    """jsonb's text output (one value, no surrounding whitespace) through the C
    scanner alone, without json.loads' Python layers."""
    return {} if text == "{}" else _scan_json(text, 0)[0]


def _completed_run(
    r: Sequence[Any],
    src: BatchSource,
    texts: tuple[Any, Any] | None = None,
) -> CompletedRun:
    return CompletedRun(
        run_id=r[0],
        batch_id=r[1],
        template_id=src.template_id,
        template_version=src.template_version,
        provider=src.provider,
        model=src.model,
        variables=_json(r[2]),
        messages=[ChatMessage(m["role"], m["content"]) for m in _json(r[3])],
        output_text=r[4] or "",
        finish_reason=r[5] or "",
        tokens=None
        if r[6] is None
        else TokenLogprobs(
            tokens=texts[0] if texts else PackedStrings(r[6], len(r[7])),
            logprobs=r[7],
            top_counts=r[8],
            top_tokens=texts[1] if texts else PackedStrings(r[9], len(r[10])),
            top_logprobs=r[10],
        ),
        input_tokens=r[11],
        output_tokens=r[12],
        latency_ms=r[13],
        scores=_json(r[14]),
    )
