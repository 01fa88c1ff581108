"""Opaque keyset page tokens, bound to the filter they were issued for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from nex.collector.server.domain.errors import Violations
from nex.collector.server.domain.limits import MAX_PAGE_TOKEN


@dataclass(frozen=True, slots=True)
class PageRequest:
    size: int
    after: str | None  # the last key of the previous page


def _fingerprint(filter_key: str) -> str:
    return hashlib.sha256(filter_key.encode()).hexdigest()[:12]


def encode_token(last_key: str, filter_key: str) -> str:
    raw = json.dumps({"k": last_key, "f": _fingerprint(filter_key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(
    v: Violations, token: str, filter_key: str, field: str = "page_token"
) -> str | None:
    """The key after which the page starts, or None for the first page."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        key, fingerprint = data["k"], data["f"]
        if not isinstance(key, str) or not isinstance(fingerprint, str):
            raise ValueError
        # A token is caller input too: its key goes to PostgreSQL, which refuses NUL.
        if "\x00" in key or len(key) > MAX_PAGE_TOKEN:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        v.add(field, "is not a page token this service issued")
        return None
    if fingerprint != _fingerprint(filter_key):
        v.add(field, "was issued for a different filter; repeat the first request's filter")
        return None
    return key
