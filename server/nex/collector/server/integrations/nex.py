"""The HTTP calls the collector makes to NEX in integrated mode."""

from __future__ import annotations

from typing import TypedDict
from urllib.parse import quote

import httpx

from nex.collector.server.domain.errors import Unavailable


class EvidencePayload(TypedDict):
    """The JSON body of POST /v1/evidence: one evidence link and its NEX context."""

    collector_link_id: str
    nex_context_id: str
    nex_context_version: str
    kind: str
    note: str
    dataset_id: str | None
    run_id: str | None
    uri: str


class NexRejected(Exception):
    """NEX answered a delivery with a 4xx: retrying the same payload won't help
    soon, but the link is kept and tried again later (NEX may be fixed)."""


class NexClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=20),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def context_exists(self, nex_context_id: str, nex_context_version: str) -> bool:
        """True on 200, False on 404; anything else (or no answer) is Unavailable."""
        context, version = quote(nex_context_id, safe=""), quote(nex_context_version, safe="")
        path = f"/v1/contexts/{context}/versions/{version}"
        try:
            response = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"NEX did not answer: {type(exc).__name__}", reason="NEX_UNAVAILABLE"
            ) from None
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise Unavailable(
            f"NEX answered {response.status_code}",
            reason="NEX_UNAVAILABLE",
            metadata={"status": str(response.status_code)},
        )

    async def post_evidence(self, payload: EvidencePayload) -> None:
        """Delivers one evidence link; raises Unavailable (retry soon) or NexRejected."""
        try:
            response = await self._http.post("/v1/evidence", json=dict(payload))
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"NEX did not answer: {type(exc).__name__}", reason="NEX_UNAVAILABLE"
            ) from None
        if response.is_success:
            return
        if response.status_code >= 500 or response.status_code == 429:
            raise Unavailable(f"NEX answered {response.status_code}", reason="NEX_UNAVAILABLE")
        raise NexRejected(f"NEX rejected the link: {response.status_code} {response.text[:200]}")
