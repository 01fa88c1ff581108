"""Small helpers the use cases share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from nex.collector.server.domain.errors import NotFound, Violations
from nex.collector.server.domain.pagination import PageRequest, decode_token
from nex.collector.server.domain.validation import page_size


def now() -> datetime:
    return datetime.now(UTC)


def page_request(v: Violations, size: int, token: str, filter_key: str) -> PageRequest:
    """Validates page_size and page_token into a PageRequest (violations go to `v`)."""
    return PageRequest(size=page_size(v, size), after=decode_token(v, token, filter_key))


T = TypeVar("T")


def require(value: T | None, resource: str, id_: str) -> T:
    if value is None:
        raise NotFound(resource, id_)
    return value


def check_id(v: Violations, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > 64:
        v.add(field, "is not an id this service issued")
