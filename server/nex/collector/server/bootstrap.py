"""The composition root: builds everything a process needs from Settings, and
closes all of it on the way out. The gRPC process and the worker both use it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
from arq.connections import ArqRedis, RedisSettings, create_pool
from pydantic import SecretStr
from redis.exceptions import RedisError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from nex.collector.server.config import (
    ConfigError,
    IntegrationMode,
    Settings,
    load_teachers,
    teacher_credentials,
)
from nex.collector.server.db.answers import AnswerWriter
from nex.collector.server.db.engine import make_engine
from nex.collector.server.db.event_hub import EventHub
from nex.collector.server.db.migrate import current_revision, head_revision, upgrade_to_head
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.domain.scoring import MetricRegistry
from nex.collector.server.domain.teachers import TeacherDirectory
from nex.collector.server.embedded import EmbeddedServices, start_embedded
from nex.collector.server.integrations.nex import NexClient
from nex.collector.server.limiter import RateLimiter
from nex.collector.server.parquet.storage import DatasetStore, StorageConfigError
from nex.collector.server.providers import pricing
from nex.collector.server.providers.batch_jobs import BatchBackends
from nex.collector.server.providers.registry import ProviderSet
from nex.collector.server.providers.retry import RetryPolicy
from nex.collector.server.queue import (
    DELIVER_EVIDENCE,
    JobQueue,
    in_progress_ttl_ms,
    job_timeouts,
)
from nex.collector.server.sandbox.pool import SandboxLimits, TemplateSandbox
from nex.collector.server.services.budgets import Budgets
from nex.collector.server.services.context_refs import ContextRefs
from nex.collector.server.services.datasets import Datasets
from nex.collector.server.services.evidence import Evidence
from nex.collector.server.services.execution import RunExecutor
from nex.collector.server.services.liveness import Heartbeat, new_worker_id
from nex.collector.server.services.provider_jobs import ProviderJobs, ProviderJobSettings
from nex.collector.server.services.reconcile import Reconciler
from nex.collector.server.services.side_loop import SideLoop
from nex.collector.server.services.teacher import Teacher
from nex.collector.server.services.teachers import TeacherEndpoints
from nex.collector.server.services.templates import Templates
from nex.collector.server.services.throttle import CallGate
from nex.collector.server.services.watch import RunWatcher

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The process cannot start; the message says why and what to do about it."""


@dataclass
class Container:
    settings: Settings
    database_url: str
    redis_url: str
    engine: AsyncEngine
    uow: UnitOfWorkFactory
    context_refs: ContextRefs
    templates: Templates
    redis: ArqRedis
    queue: JobQueue
    providers: ProviderSet
    teacher: Teacher
    executor: RunExecutor
    reconciler: Reconciler
    hub: EventHub
    watcher: RunWatcher
    datasets: Datasets
    evidence: Evidence
    sandbox: TemplateSandbox
    heartbeat: Heartbeat
    teachers: TeacherDirectory
    teacher_endpoints: TeacherEndpoints
    provider_jobs: ProviderJobs
    embedded: EmbeddedServices | None = None


async def resolve_urls(settings: Settings) -> tuple[str, str, EmbeddedServices | None]:
    """The database and Redis URLs; starts the embedded ones when unset (in a
    thread: starting PostgreSQL takes seconds the event loop must not wait)."""
    embedded = None
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        embedded = await asyncio.to_thread(start_embedded, settings.data_dir)
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    return database_url, redis_url, embedded


def _safe_url(url: str) -> str:
    """A database or Redis URL with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say only its scheme
        return url.split("://", 1)[0] + "://…"


async def check_database(engine: AsyncEngine, *, migrate: bool) -> None:
    """Reachable, and at the schema this build needs (migrating first if asked):
    a server on a stale schema would answer every call with an internal error."""
    where = _safe_url(engine.url.render_as_string(hide_password=False))
    try:
        async with engine.connect():
            pass
    except (OSError, DBAPIError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        raise StartupError(f"cannot reach PostgreSQL at {where}: {reason}") from exc
    if migrate:
        await upgrade_to_head(engine)
    current, head = await current_revision(engine), head_revision()
    if current is None:
        raise StartupError(
            f"the database at {where} has no schema yet: run `nex-collector migrate` "
            "(or start with `serve --migrate`)"
        )
    if current != head:
        raise StartupError(
            f"the database at {where} is at schema revision {current}, this build needs "
            f"{head}: run `nex-collector migrate` with this build (a revision it does not "
            "know means the database was migrated by a newer one)"
        )


async def open_redis(redis_url: str) -> ArqRedis:
    try:
        return await create_pool(RedisSettings.from_dsn(redis_url))
    except (OSError, RedisError) as exc:
        raise StartupError(f"cannot reach Redis at {_safe_url(redis_url)}: {exc}") from exc


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def read_teachers(settings: Settings) -> TeacherDirectory:
    """The deployment's teachers (TEACHERS_FILE); prices follow them. A bad
    file stops start-up with one line."""
    try:
        teachers = load_teachers(settings)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    pricing.use_teachers(teachers)
    return teachers


def open_dataset_store(settings: Settings) -> DatasetStore:
    """Where datasets live (DATASETS_URI); a setting that cannot work stops
    start-up with one line."""
    try:
        return DatasetStore.from_uri(
            settings.datasets_location,
            endpoint_url=settings.datasets_s3_endpoint,
            env=settings.storage_env(),
        )
    except (StorageConfigError, OSError, ValueError) as exc:
        raise StartupError(f"DATASETS_URI: {exc}") from None


def plain_dsn(database_url: str) -> str:
    """The asyncpg DSN of a SQLAlchemy URL (for LISTEN/NOTIFY)."""
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def migrate_database(settings: Settings) -> None:
    """`nex-collector migrate`: the schema to head; needs PostgreSQL only."""
    database_url, _, embedded = await resolve_urls(settings)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    try:
        await check_database(engine, migrate=True)
    finally:
        await engine.dispose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def sandbox_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        cpu_s=settings.template_cpu_s,
        memory_mb=settings.template_memory_mb,
        processes=settings.template_processes,
    )


@contextlib.asynccontextmanager
async def open_container(
    settings: Settings, *, migrate: bool = False, serve: bool = True
) -> AsyncIterator[Container]:
    """Everything a process needs; closes all of it on the way out. A process
    that does not `serve` RPCs never renders, so it starts no template sandbox."""
    teachers = read_teachers(settings)
    database_url, redis_url, embedded = await resolve_urls(settings)
    engine = make_engine(
        database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    # The heartbeat and teachers' answers run on connections and a loop of their
    # own (used there only): a pool busy with claims queued for the run-events
    # lock, or a main loop busy with hundreds of jobs, must neither make a live
    # worker look dead nor keep a paid answer from being stored.
    heartbeat_engine = make_engine(database_url, pool_size=1, max_overflow=1)
    answers = AnswerWriter(database_url, size=4)
    side_loop = SideLoop("heartbeat-answers")
    closers: list[Any] = []
    try:
        await check_database(engine, migrate=migrate)
        uow = UnitOfWorkFactory(
            async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession)
        )
        redis = await open_redis(redis_url)
        closers.append(redis.aclose)
        queue = JobQueue(redis, marker_ttl_ms=in_progress_ttl_ms(settings))
        providers = ProviderSet(
            openai_api_key=_secret(settings.openai_api_key),
            openai_base_url=settings.openai_base_url,
            anthropic_api_key=_secret(settings.anthropic_api_key),
            anthropic_base_url=settings.anthropic_base_url,
            timeout=settings.teacher_timeout_s,
            teachers=teachers,
            credentials=lambda teacher: teacher_credentials(settings, teacher),
        )
        closers.append(providers.aclose)
        limiter = RateLimiter(redis, lease_s=settings.teacher_timeout_s + 30)
        nex = None
        if settings.mode is IntegrationMode.INTEGRATED:
            nex = NexClient(
                settings.nex_base_url or "",
                _secret(settings.nex_api_token),
                timeout=settings.nex_timeout_s,
            )
            closers.append(nex.aclose)
        evidence = Evidence(
            uow,
            queue,
            nex,
            # Outlives the delivery job, so a live delivery is never taken twice.
            lease=timedelta(seconds=job_timeouts(settings)[DELIVER_EVIDENCE] + 10),
        )
        lease = timedelta(seconds=settings.run_lease_s)
        heartbeat = Heartbeat(
            UnitOfWorkFactory(
                async_sessionmaker(heartbeat_engine, expire_on_commit=False, class_=AsyncSession)
            ),
            new_worker_id(),
            lease=lease,
            interval_s=settings.worker_heartbeat_s,
            loop=side_loop,
        )
        budgets = Budgets(uow, daily_cap=teachers.daily_cap)
        executor = RunExecutor(
            uow,
            providers.get,
            policy=RetryPolicy(max_attempts=settings.teacher_max_attempts),
            lease=lease,
            budgets=budgets,
            evidence=evidence,
            worker_id=heartbeat.worker_id,
            answers=answers,
            answers_loop=side_loop,
            gate=CallGate(limiter, teachers),
        )
        backends = BatchBackends(
            teachers,
            lambda teacher: teacher_credentials(settings, teacher),
            timeout=max(settings.teacher_timeout_s, 300.0),  # uploads of up to 200 MB
        )
        closers.append(backends.aclose)
        provider_jobs = ProviderJobs(
            uow,
            executor,
            queue,
            teachers,
            backends.get,
            settings=ProviderJobSettings(
                poll_s=settings.provider_job_poll_s,
                max_poll_s=settings.provider_job_max_poll_s,
                ingest_chunk=settings.provider_job_ingest_chunk,
                max_step_failures=settings.provider_job_max_step_failures,
                deadline_margin=timedelta(seconds=settings.provider_deadline_margin_s),
                max_attempts=settings.teacher_max_attempts,
                settle=timedelta(seconds=settings.provider_job_tick_s),
            ),
            evidence=evidence,
            budgets=budgets,
            worker_id=heartbeat.worker_id,
        )
        datasets = Datasets(
            uow,
            queue,
            store=open_dataset_store(settings),
            metrics=MetricRegistry.from_entry_points(),
            evidence=evidence,
            lease=timedelta(seconds=settings.dataset_lease_s),
            integrated=evidence.enabled,
        )
        sandbox = TemplateSandbox(sandbox_limits(settings))
        closers.append(sandbox.aclose)
        if serve:
            try:
                await sandbox.start()
            except RuntimeError as exc:
                raise StartupError(str(exc)) from exc
        hub = EventHub(plain_dsn(database_url))
        await hub.start()
        closers.append(hub.aclose)
        watcher = RunWatcher(
            uow,
            hub,
            heartbeat_s=settings.watch_heartbeat_s,
            buffer_events=settings.watch_buffer_events,
        )
        closers.append(watcher.aclose)
        container = Container(
            settings=settings,
            database_url=database_url,
            redis_url=redis_url,
            engine=engine,
            uow=uow,
            context_refs=ContextRefs(uow, nex.context_exists if nex else None),
            templates=Templates(uow, sandbox, integrated=evidence.enabled),
            redis=redis,
            queue=queue,
            providers=providers,
            teacher=Teacher(
                uow,
                queue,
                sandbox,
                teachers=teachers,
                integrated=evidence.enabled,
                budgets=budgets,
                evidence=evidence,
            ),
            executor=executor,
            reconciler=Reconciler(
                uow,
                queue,
                evidence,
                max_worker_losses=settings.max_worker_losses,
                lease=lease,
                budgets=budgets,
            ),
            hub=hub,
            watcher=watcher,
            datasets=datasets,
            evidence=evidence,
            sandbox=sandbox,
            heartbeat=heartbeat,
            teachers=teachers,
            teacher_endpoints=TeacherEndpoints(teachers, limiter),
            provider_jobs=provider_jobs,
            embedded=embedded,
        )
        yield container
    finally:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        await engine.dispose()
        with contextlib.suppress(Exception):
            await side_loop.run(heartbeat_engine.dispose())
        with contextlib.suppress(Exception):
            await side_loop.run(answers.aclose())
        await side_loop.aclose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
