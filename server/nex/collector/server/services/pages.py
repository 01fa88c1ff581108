"""Paging of the List RPCs: page size and token checks, one page per call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nex.collector.server.db.uow import UnitOfWork, UnitOfWorkFactory
from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.pagination import PageRequest, decode_token, encode_token
from nex.collector.server.domain.sizes import page_cut
from nex.collector.server.domain.validation import page_size

T = TypeVar("T")

Fetch = Callable[[UnitOfWork, PageRequest], Awaitable[tuple[Sequence[T], str | None]]]


def page_request(v: Violations, size: int, token: str, filter_key: str) -> PageRequest:
    """Validates page_size and page_token into a PageRequest (violations go to `v`)."""
    return PageRequest(size=page_size(v, size), after=decode_token(v, token, filter_key))


async def list_page(
    uow: UnitOfWorkFactory,
    key: str,
    page_size: int,
    page_token: str,
    fetch: Fetch[T],
    v: Violations | None = None,
    *,
    size_of: Callable[[T], int] | None = None,
    id_of: Callable[[T], str] | None = None,
) -> tuple[Sequence[T], str]:
    """One page of a List RPC: validates size and token (with any violations
    already in `v`), fetches, and issues the next token bound to `key`. With
    `size_of`, the page also ends once its items reach PAGE_BYTES; then `id_of`
    is needed too (pages are keyed by id: the next starts after the last kept)."""
    if size_of is not None and id_of is None:
        raise TypeError("list_page: size_of needs id_of")
    v = v or Violations()
    page = page_request(v, page_size, page_token, key)
    v.raise_if_any()
    async with uow() as tx:
        items, last = await fetch(tx, page)
    if size_of is not None and id_of is not None:
        kept = page_cut([size_of(item) for item in items])
        if kept < len(items):
            items, last = items[:kept], id_of(items[kept - 1])
    return items, encode_token(last, key) if last else ""
