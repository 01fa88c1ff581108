"""Use cases of DatasetService, and the build job the worker runs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa

from nex.collector.server import metrics
from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.datasets import (
    PART_DONE,
    BatchSource,
    Dataset,
    DatasetCounts,
    DatasetFile,
    DatasetPart,
    DatasetStatus,
    FilterDrop,
    check_path_component,
)
from nex.collector.server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Violations,
    integration_disabled,
    quote,
    require,
)
from nex.collector.server.domain.filters import Filter, filter_to_dict, validate_filters
from nex.collector.server.domain.limits import MAX_BATCHES_PER_DATASET, MAX_DATASET_PARTS
from nex.collector.server.domain.runs import RunError
from nex.collector.server.domain.scoring import MetricRegistry
from nex.collector.server.domain.sizes import READ_MESSAGE_BYTES
from nex.collector.server.domain.validation import check_id, check_request_id
from nex.collector.server.ids import new_id
from nex.collector.server.parquet.builder import EmptyDatasetError, build_dataset
from nex.collector.server.parquet.reader import (
    ManifestMismatch,
    OpenFile,
    ipc_messages_of,
    open_file,
    read_manifest,
)
from nex.collector.server.parquet.storage import DatasetStore, Location
from nex.collector.server.parquet.verify import verify_dataset
from nex.collector.server.parquet.writer import (
    BuildResult,
    DatasetExistsError,
    commit_parts,
    parts_staging,
)
from nex.collector.server.queue import BUILD_DATASET, BUILD_DATASET_PART, JobQueue
from nex.collector.server.services.clock import now
from nex.collector.server.services.context_refs import usable_ref
from nex.collector.server.services.evidence import Evidence
from nex.collector.server.services.pages import list_page

log = logging.getLogger(__name__)

BUILD_LEASE = timedelta(seconds=60)
_RENEW_EVERY_S = 10.0


@dataclass(frozen=True, slots=True)
class NewDataset:
    name: str
    version: str
    batch_ids: Sequence[str]
    filters: Sequence[Filter]
    request_id: str = ""
    context_ref_id: str = ""
    link_evidence: bool = False
    allow_empty: bool = False
    parts: int = 0  # 0 or 1: one file per table; more: a build in parts


def part_job_id(dataset_id: str, part: int) -> str:
    return f"{dataset_id}:part:{part}"


def _parse_part_job_id(job_id: str) -> tuple[str, int]:
    dataset_id, _, part = job_id.rpartition(":part:")
    return dataset_id, int(part)


class Datasets:
    def __init__(
        self,
        uow: UnitOfWorkFactory,
        queue: JobQueue,
        *,
        store: DatasetStore,
        metrics: MetricRegistry,
        evidence: Evidence | None = None,
        lease: timedelta = BUILD_LEASE,
        integrated: bool = False,
    ) -> None:
        self._uow = uow
        self._integrated = integrated
        self._queue = queue
        self._store = store
        self._metrics = metrics
        self._evidence = evidence
        self._lease = lease
        self._renew_every_s = min(_RENEW_EVERY_S, lease.total_seconds() / 3)

    @property
    def store(self) -> DatasetStore:
        return self._store

    def folder(self, name: str, version: str) -> Location:
        return self._store.location(name, version)

    async def build(self, cmd: NewDataset) -> Dataset:
        """Validates and stores the manifest as BUILDING; a worker builds it."""
        v = Violations()
        check_path_component(v, "name", cmd.name)
        check_path_component(v, "version", cmd.version)
        if not cmd.batch_ids:
            v.add("batch_ids", "give at least one batch")
        if len(cmd.batch_ids) > MAX_BATCHES_PER_DATASET:
            v.add("batch_ids", f"at most {MAX_BATCHES_PER_DATASET} batches")
        for i, batch_id in enumerate(cmd.batch_ids):
            check_id(v, f"batch_ids[{i}]", batch_id)
        if not 0 <= cmd.parts <= MAX_DATASET_PARTS:
            v.add("parts", f"must be 0 to {MAX_DATASET_PARTS} (0 or 1: one file per table)")
        if len(set(cmd.batch_ids)) != len(cmd.batch_ids):
            v.add("batch_ids", "lists a batch twice")
        v.extend(validate_filters(cmd.filters, "filters"))
        check_id(v, "context_ref_id", cmd.context_ref_id, required=False)
        check_request_id(v, "request_id", cmd.request_id)
        if cmd.link_evidence and not cmd.context_ref_id:
            v.add("link_evidence", "needs context_ref_id")
        v.raise_if_any()
        if cmd.link_evidence and not self._integrated:
            raise integration_disabled("evidence links (link_evidence)")
        async with self._uow() as tx:
            if cmd.request_id and (found := await tx.datasets.find(request_id=cmd.request_id)):
                return found
            if await tx.datasets.find(name=cmd.name, version=cmd.version):
                return await self._first_build(tx, cmd)
            for batch_id in cmd.batch_ids:
                require(await tx.batches.get(batch_id), "batch", batch_id)
            if cmd.context_ref_id:
                usable_ref(
                    await tx.context_refs.get(cmd.context_ref_id),
                    cmd.context_ref_id,
                    integrated=self._integrated,
                )
            dataset = Dataset(
                id=new_id("ds"),
                name=cmd.name,
                version=cmd.version,
                status=DatasetStatus.BUILDING,
                uri=self.folder(cmd.name, cmd.version).uri,
                batch_ids=tuple(cmd.batch_ids),
                filters=tuple(cmd.filters),
                create_time=now(),
                context_ref_id=cmd.context_ref_id or None,
                link_evidence=cmd.link_evidence,
                allow_empty=cmd.allow_empty,
                parts=max(1, cmd.parts),
            )
            if not await tx.datasets.insert(dataset, cmd.request_id):
                await tx.rollback()  # a concurrent build of the same version or request id won
                return await self._first_build(tx, cmd)
            await tx.commit()
        await self._queue.try_enqueue(BUILD_DATASET, [dataset.id])
        return dataset

    @staticmethod
    async def _first_build(tx: UnitOfWork, cmd: NewDataset) -> Dataset:
        """The (name, version) exists: it is this call's own when a call with the
        same request id made it, possibly one that committed a moment ago (which
        is why the request id is looked up again here), else ALREADY_EXISTS."""
        if cmd.request_id and (found := await tx.datasets.find(request_id=cmd.request_id)):
            return found
        raise AlreadyExists(
            f"dataset {cmd.name} version {cmd.version} exists; a version never changes",
            reason="DATASET_VERSION_EXISTS",
            metadata={"name": cmd.name, "version": cmd.version},
        )

    async def get(self, id_: str) -> Dataset:
        v = Violations()
        check_id(v, "id", id_)
        v.raise_if_any()
        async with self._uow() as tx:
            return require(await tx.datasets.get(id_), "dataset", id_)

    async def list(
        self, *, name: str, page_size: int, page_token: str
    ) -> tuple[Sequence[Dataset], str]:
        return await list_page(
            self._uow,
            f"datasets|{name}",
            page_size,
            page_token,
            lambda tx, page: tx.datasets.page(page, name=name),
        )

    # -- reading -------------------------------------------------------------------

    async def _ready(self, dataset_id: str, field: str) -> tuple[Dataset, Location]:
        v = Violations()
        check_id(v, field, dataset_id)
        v.raise_if_any()
        async with self._uow() as tx:
            dataset = require(await tx.datasets.get(dataset_id), "dataset", dataset_id)
        if dataset.status is not DatasetStatus.READY:
            raise FailedPrecondition(
                f"dataset {dataset_id} is {dataset.status.value}, not ready: nothing to read yet"
                if dataset.status is DatasetStatus.BUILDING
                else f"dataset {dataset_id} failed to build: it has no files",
                reason="DATASET_NOT_READY",
                metadata={"id": dataset_id, "status": dataset.status.value},
            )
        location = self._store.locate(dataset.uri)
        if location is None:
            raise FailedPrecondition(
                f"dataset {dataset_id} is stored at {dataset.uri}, outside this server's "
                f"DATASETS_URI ({self._store.uri})",
                reason="DATASET_NOT_IN_STORE",
                metadata={"id": dataset_id, "uri": dataset.uri},
            )
        return dataset, location

    async def read(
        self,
        dataset_id: str,
        *,
        file: str,
        columns: Sequence[str],
        offset: int,
        limit: int,
        budget: int = READ_MESSAGE_BYTES,
    ) -> AsyncIterator[tuple[bytes, int]]:
        """(Arrow IPC message, rows in it) of rows [offset, offset + limit) of one file of a
        READY dataset (see parquet.reader); the file is read a row group at a
        time, in a thread. Every check happens before the first message."""
        v = Violations()
        if offset < 0:
            v.add("offset", f"must be 0 or more, got {offset}")
        if limit < 0:
            v.add("limit", f"must be 0 (to the end) or more, got {limit}")
        seen: set[str] = set()
        for i, column in enumerate(columns):
            if column in seen:
                v.add(f"columns[{i}]", f"{quote(column)} is named twice")
            seen.add(column)
        if not file:
            v.add("file", "is required: one of the dataset's files, e.g. targets.parquet")
        v.raise_if_any()
        dataset, location = await self._ready(dataset_id, "dataset_id")
        wanted = file if file.endswith(".parquet") else f"{file}.parquet"
        table = wanted.removesuffix(".parquet")
        # One file, or all parts of a table in order (a build in parts), read as one table.
        entries = [f for f in dataset.files if f.name == wanted] or sorted(
            (f for f in dataset.files if f.name.startswith(f"{table}/")), key=lambda f: f.name
        )
        if not entries:
            tables = sorted({f.name.split("/")[0].removesuffix(".parquet") for f in dataset.files})
            shown = (
                [f"{t}.parquet" for t in tables]
                if dataset.parts > 1
                else [f.name for f in dataset.files]
            )
            raise InvalidArgument.one(
                "file", f"{quote(file)} is not a file of this dataset; one of {', '.join(shown)}"
            )
        name = wanted if len(entries) > 1 else entries[0].name
        opened: list[OpenFile] = []
        try:
            try:
                for entry in entries:
                    opened.append(
                        await asyncio.to_thread(
                            open_file, location, dataset.id, entry.name, entry.sha256
                        )
                    )
            except (ManifestMismatch, OSError, pa.ArrowException) as exc:
                raise _files_mismatch(dataset, exc) from None
            v = Violations()
            schema = opened[0].schema
            known = set(schema.names)
            for i, column in enumerate(columns):
                if column not in known:
                    v.add(
                        f"columns[{i}]",
                        f"{quote(column)} is not a column of {name}; its columns: "
                        f"{', '.join(schema.names)}",
                    )
            rows = sum(o.rows for o in opened)
            if offset > rows:
                v.add("offset", f"{name} has {rows} rows; got offset {offset}")
            v.raise_if_any()
            messages = ipc_messages_of(opened, list(columns), offset, limit, budget)
            while True:
                try:
                    message = await asyncio.to_thread(_next, messages)
                except (OSError, pa.ArrowException) as exc:
                    raise _files_mismatch(dataset, exc) from None
                if message is None:
                    return
                yield message
        finally:
            for o in opened:
                await asyncio.to_thread(o.close)

    async def verify(self, dataset_id: str) -> tuple[Dataset, Sequence[str]]:
        """Recomputes every file's sha256, size, rows and schema where the files
        are, against manifest.json and against the files recorded at build time."""
        dataset, location = await self._ready(dataset_id, "id")
        problems = await asyncio.to_thread(_verify, location, dataset)
        return dataset, problems

    async def sweep_staging(self) -> Sequence[str]:
        """Removes the staging folders of builds that are not in progress
        (killed builds' leftovers); a build whose lease is live keeps its own."""
        async with self._uow() as tx:
            building = await tx.datasets.building_versions(now())
        return await asyncio.to_thread(self._store.sweep, set(building))

    # -- the worker's job ----------------------------------------------------------

    async def run_build(self, dataset_id: str) -> str:
        """Builds a BUILDING dataset; idempotent, and safe to run again after a
        crash at any point."""
        async with self._uow() as tx:
            if not await tx.datasets.claim(dataset_id, self._lease, now()):
                return "skipped: not building, or another worker holds it"
            await tx.commit()
            dataset = require(await tx.datasets.get(dataset_id), "dataset", dataset_id)
            sources = await tx.datasets.sources(dataset.batch_ids)
        final_dir = self.folder(dataset.name, dataset.version)
        files: Sequence[DatasetFile]
        try:
            if dataset.parts > 1:
                parts_result = await self._coordinate(dataset, sources, final_dir)
                if isinstance(parts_result, str):
                    return parts_result
                result = parts_result
            else:
                result = await self._write(dataset, sources, final_dir)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(dataset_id))
            raise
        except EmptyDatasetError as exc:
            return await self._fail(dataset, "EMPTY_DATASET", str(exc))
        except DatasetExistsError:
            adopted = await asyncio.to_thread(self._adopt, dataset, final_dir)
            if adopted is None:
                return await self._fail(
                    dataset,
                    "DATASET_FOLDER_EXISTS",
                    f"{final_dir.uri} exists and belongs to another build",
                )
            files, counts = adopted
        except Exception as exc:
            log.exception("dataset %s failed", dataset_id)
            return await self._fail(dataset, "BUILD_FAILED", f"{type(exc).__name__}: {exc}")
        else:
            files = result.files
            counts = DatasetCounts(
                result.total,
                result.kept,
                tuple(result.dropped),
            )
        async with self._uow() as tx:
            await tx.datasets.finish(
                dataset_id, status=DatasetStatus.READY, now=now(), files=files, counts=counts
            )
            # In the same transaction: READY and its evidence link commit together.
            links = await self._evidence.link_ready_dataset(tx, dataset) if self._evidence else []
            await tx.commit()
        metrics.DATASET_BUILDS.labels(DatasetStatus.READY.value).inc()
        metrics.DATASET_RUNS_READ.inc(counts.total)
        if self._evidence is not None:
            await self._evidence.enqueue(links)
        return f"ready: {counts.kept} of {counts.total} runs kept"

    @staticmethod
    def _manifest_extra(dataset: Dataset, sources: Mapping[str, BatchSource]) -> dict[str, Any]:
        return {
            "id": dataset.id,
            "name": dataset.name,
            "version": dataset.version,
            "batch_ids": list(dataset.batch_ids),
            "sources": {b: sources[b].manifest() for b in sorted(sources)},
            "context_ref_id": dataset.context_ref_id,
            "create_time": dataset.create_time.isoformat(),
            "status": DatasetStatus.READY.value,
        }

    async def _write(
        self,
        dataset: Dataset,
        sources: Mapping[str, BatchSource],
        final_dir: Location,
        part: DatasetPart | None = None,
    ) -> BuildResult:
        last_renewal = time.monotonic()

        async def progress(total: int, kept: int) -> None:
            nonlocal last_renewal
            if time.monotonic() - last_renewal > self._renew_every_s:
                last_renewal = time.monotonic()
                async with self._uow() as renew:
                    await renew.datasets.renew(dataset.id, self._lease, now())
                    if part is not None:
                        await renew.datasets.renew_part(dataset.id, part.part, self._lease, now())
                    await renew.commit()

        async with self._uow() as tx:
            return await build_dataset(
                tx.datasets.completed_runs(
                    dataset.batch_ids,
                    sources,
                    first_run_id=part.first_run_id if part else None,
                    end_run_id=part.end_run_id if part else None,
                ),
                filters=dataset.filters,
                metrics=self._metrics,
                final_dir=final_dir,
                manifest_extra=self._manifest_extra(dataset, sources),
                progress=progress,
                allow_empty=dataset.allow_empty or part is not None,
                part=part.part if part else None,
                staging=parts_staging(final_dir, dataset.id) if part else None,
            )

    # -- builds in parts -------------------------------------------------------------

    async def _coordinate(
        self, dataset: Dataset, sources: Mapping[str, BatchSource], final_dir: Location
    ) -> BuildResult | str:
        """The BUILD_DATASET job of a build in parts (holding the dataset's lease):
        plans the parts once, (re)starts the parts nobody builds, and once every
        part is written, writes the manifest (the commit point). The last part
        to finish runs this job again; so does the reconciler when no part
        renewed the dataset's lease in time (a part's worker died)."""
        async with self._uow() as tx:
            parts = await tx.datasets.parts(dataset.id)
            if not parts:
                # No part has started: leftovers of earlier, killed builds of this version go.
                await asyncio.to_thread(self._store.remove_uncommitted, final_dir.path)
                bounds = await tx.datasets.part_bounds(dataset.batch_ids, dataset.parts)
                await tx.datasets.plan_parts(dataset.id, bounds)
                await tx.commit()
                parts = await tx.datasets.parts(dataset.id)
        at = now()
        waiting = [p for p in parts if p.status != PART_DONE]
        if waiting:
            stale = [
                part_job_id(dataset.id, p.part)
                for p in waiting
                if p.lease_expires is None or p.lease_expires < at
            ]
            try:
                await self._queue.release(BUILD_DATASET_PART, stale)
            except Exception as exc:  # Redis away: the reconciler runs this job again
                log.warning("could not enqueue the parts of dataset %s (%s)", dataset.id, exc)
            return f"building: {len(parts) - len(waiting)} of {len(parts)} parts written"
        if not dataset.allow_empty and sum(p.counts.kept for p in parts) == 0:
            total = sum(p.counts.total for p in parts)
            drops = [
                FilterDrop(d.index, d.filter, sum(p.counts.dropped[d.index].dropped for p in parts))
                for d in parts[0].counts.dropped
            ]
            await asyncio.to_thread(self._store.delete_tree, parts_staging(final_dir, dataset.id))
            raise EmptyDatasetError(total, drops)
        written = [
            BuildResult(
                files=list(p.files),
                total=p.counts.total,
                kept=p.counts.kept,
                dropped=list(p.counts.dropped),
                uri=final_dir.uri,
            )
            for p in parts
        ]
        return await asyncio.to_thread(
            commit_parts,
            final_dir,
            parts_staging(final_dir, dataset.id),
            written,
            filters=[filter_to_dict(f) for f in dataset.filters],
            manifest_extra=self._manifest_extra(dataset, sources),
        )

    async def run_part(self, job_id: str, worker_id: str = "") -> str:
        """Writes one part of a build in parts (BUILD_DATASET_PART); idempotent.
        The last part to finish hands the build back to BUILD_DATASET, which
        writes the manifest."""
        dataset_id, index = _parse_part_job_id(job_id)
        async with self._uow() as tx:
            dataset = await tx.datasets.get(dataset_id)
            if dataset is None or dataset.status is not DatasetStatus.BUILDING:
                return "skipped: the dataset is not building"
            part = await tx.datasets.claim_part(dataset_id, index, self._lease, now(), worker_id)
            if part is None:
                return "skipped: written, or another worker holds it"
            await tx.datasets.renew(dataset_id, self._lease, now())
            await tx.commit()
            sources = await tx.datasets.sources(dataset.batch_ids)
        final_dir = self.folder(dataset.name, dataset.version)
        try:
            result: BuildResult = await self._write(dataset, sources, final_dir, part)
        except asyncio.CancelledError:
            await asyncio.shield(self._release_part(dataset_id, index))
            raise
        except DatasetExistsError:  # committed already: the build's job records it
            await self._queue.try_enqueue(BUILD_DATASET, [dataset_id])
            return "skipped: the dataset is in place"
        except Exception as exc:
            log.exception("dataset %s part %d failed", dataset_id, index)
            return await self._fail(
                dataset, "BUILD_FAILED", f"part {index}: {type(exc).__name__}: {exc}"
            )
        async with self._uow() as tx:
            await tx.datasets.lock(dataset_id)
            await tx.datasets.finish_part(
                dataset_id,
                index,
                result.files,
                DatasetCounts(
                    result.total,
                    result.kept,
                    tuple(result.dropped),
                ),
            )
            last = all(p.status == PART_DONE for p in await tx.datasets.parts(dataset_id))
            if last:  # the manifest is BUILD_DATASET's to write, now
                await tx.datasets.renew(dataset_id, timedelta(0), now())
            await tx.commit()
        if last:
            await self._queue.try_enqueue(BUILD_DATASET, [dataset_id])
        return f"part {index} written: {result.kept} of {result.total} runs kept"

    async def _release_part(self, dataset_id: str, index: int) -> None:
        async with self._uow() as tx:
            await tx.datasets.renew_part(dataset_id, index, timedelta(0), now())
            await tx.commit()

    def _adopt(
        self, dataset: Dataset, final_dir: Location
    ) -> tuple[Sequence[DatasetFile], DatasetCounts] | None:
        """A previous attempt committed the dataset and died before recording
        it: take its manifest when it is this dataset's. Reads a file: call it
        in a thread."""
        try:
            manifest = read_manifest(final_dir)
        except (OSError, ManifestMismatch):
            return None
        if manifest.get("id") != dataset.id:
            return None
        c = manifest["counts"]
        return (
            [DatasetFile(f["name"], f["sha256"], f["rows"], f["bytes"]) for f in manifest["files"]],
            DatasetCounts(
                c["total"],
                c["kept"],
                tuple(FilterDrop(d["index"], d["filter"], d["dropped"]) for d in c["dropped"]),
            ),
        )

    async def _fail(self, dataset: Dataset, code: str, message: str) -> str:
        async with self._uow() as tx:
            await tx.datasets.finish(
                dataset.id, status=DatasetStatus.FAILED, now=now(), error=RunError(code, message)
            )
            await tx.commit()
        metrics.DATASET_BUILDS.labels(DatasetStatus.FAILED.value).inc()
        return f"failed: {code}"

    async def _release(self, dataset_id: str) -> None:
        """A build interrupted by shutdown: let the next worker take it at once."""
        async with self._uow() as tx:
            await tx.datasets.renew(dataset_id, timedelta(0), now())
            await tx.commit()


def _files_mismatch(dataset: Dataset, exc: BaseException) -> FailedPrecondition:
    return FailedPrecondition(
        f"dataset {dataset.id}: its files do not match its manifest ({exc}); "
        "`nex-collector dataset verify` says what differs",
        reason="DATASET_FILES_MISMATCH",
        metadata={"id": dataset.id, "uri": dataset.uri},
    )


def _next(messages: Iterator[tuple[bytes, int]]) -> tuple[bytes, int] | None:
    return next(messages, None)


def _verify(location: Location, dataset: Dataset) -> list[str]:
    problems = verify_dataset(location)
    try:
        manifest = read_manifest(location)
    except ManifestMismatch:
        return problems
    if manifest.get("id") != dataset.id:
        problems.append(f"manifest.json belongs to {manifest.get('id')!r}, not {dataset.id}")
    listed = {
        e.get("name"): e.get("sha256") for e in manifest.get("files") or [] if isinstance(e, dict)
    }
    for f in dataset.files:
        if listed.get(f.name) != f.sha256:
            problems.append(
                f"{f.name}: the manifest's sha256 is not the one recorded at build time"
            )
    return problems
