"""Small helpers the use cases share."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.errors import FailedPrecondition, NotFound, Violations
from nex.collector.server.domain.pagination import PageRequest, decode_token, encode_token
from nex.collector.server.domain.sizes import page_cut
from nex.collector.server.domain.validation import check_id, page_size

__all__ = ["check_id", "integration_disabled", "list_page", "now", "page_request", "require"]


def now() -> datetime:
    return datetime.now(UTC)


def page_request(v: Violations, size: int, token: str, filter_key: str) -> PageRequest:
    """Validates page_size and page_token into a PageRequest (violations go to `v`)."""
    return PageRequest(size=page_size(v, size), after=decode_token(v, token, filter_key))


T = TypeVar("T")


def integration_disabled(what: str) -> FailedPrecondition:
    """What standalone mode answers when asked for something only NEX can take."""
    return FailedPrecondition(
        f"{what} need integrated mode: set MODE_INTEGRATION=integrated and NEX_BASE_URL",
        reason="INTEGRATION_DISABLED",
    )


def require(value: T | None, resource: str, id_: str) -> T:
    if value is None:
        raise NotFound(resource, id_)
    return value


Fetch = Callable[[UnitOfWork, PageRequest], Awaitable[tuple[Sequence[T], str | None]]]


async def list_page(
    uow: UnitOfWorkFactory,
    key: str,
    page_size: int,
    page_token: str,
    fetch: Fetch[T],
    v: Violations | None = None,
    *,
    size_of: Callable[[T], int] | None = None,
    id_of: Callable[[T], str] = lambda item: item.id,  # type: ignore[attr-defined]
) -> tuple[Sequence[T], str]:
    """One page of a List RPC: validates size and token (with any violations
    already in `v`), fetches, and issues the next token bound to `key`. With
    `size_of`, the page also ends once its items reach PAGE_BYTES (pages are
    keyed by id, so the next one starts after the last item kept)."""
    v = v or Violations()
    page = page_request(v, page_size, page_token, key)
    v.raise_if_any()
    async with uow() as tx:
        items, last = await fetch(tx, page)
    if size_of is not None:
        kept = page_cut([size_of(item) for item in items])
        if kept < len(items):
            items, last = items[:kept], id_of(items[kept - 1])
    return items, encode_token(last, key) if last else ""
