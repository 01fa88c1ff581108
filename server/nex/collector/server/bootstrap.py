"""The composition root: builds everything a process needs from Settings, and
closes all of it on the way out. The gRPC process and the worker both use it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from nex.collector.server.config import Settings
from nex.collector.server.db.migrate import upgrade_to_head
from nex.collector.server.db.uow import UnitOfWorkFactory
from nex.collector.server.embedded import EmbeddedServices, start_embedded
from nex.collector.server.services.context_refs import ContextRefs
from nex.collector.server.services.templates import Templates

log = logging.getLogger(__name__)


@dataclass
class Container:
    settings: Settings
    database_url: str
    redis_url: str
    engine: AsyncEngine
    uow: UnitOfWorkFactory
    context_refs: ContextRefs
    templates: Templates
    embedded: EmbeddedServices | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def resolve_urls(settings: Settings) -> tuple[str, str, EmbeddedServices | None]:
    """The database and Redis URLs; starts the embedded ones when unset."""
    embedded = None
    database_url, redis_url = settings.database_url, settings.redis_url
    if database_url is None or redis_url is None:
        embedded = start_embedded(settings.data_dir)
        database_url = database_url or embedded.database_url
        redis_url = redis_url or embedded.redis_url
    return database_url, redis_url, embedded


def make_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        database_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
    )


@contextlib.asynccontextmanager
async def open_container(settings: Settings, *, migrate: bool = False) -> AsyncIterator[Container]:
    database_url, redis_url, embedded = resolve_urls(settings)
    engine = make_engine(database_url)
    try:
        if migrate:
            await upgrade_to_head(engine)
        uow = UnitOfWorkFactory(async_sessionmaker(engine, expire_on_commit=False, class_=AsyncSession))
        container = Container(
            settings=settings,
            database_url=database_url,
            redis_url=redis_url,
            engine=engine,
            uow=uow,
            context_refs=ContextRefs(uow),
            templates=Templates(uow),
            embedded=embedded,
        )
        yield container
    finally:
        await engine.dispose()
        if embedded is not None:
            embedded.stop()
