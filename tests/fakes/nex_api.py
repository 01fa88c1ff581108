"""A real local HTTP server playing NEX: context versions it knows, evidence it
accepts (dropping repeats by collector_link_id), a switch to be down, and counters."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any, Self

from aiohttp import web


class FakeNex:
    def __init__(self, token: str = "nex-token") -> None:
        self.token = token
        self.contexts: set[tuple[str, str]] = set()
        self.evidence: dict[str, dict[str, Any]] = {}  # collector_link_id -> body, first accepted
        self.posts: Counter[str] = Counter()  # collector_link_id -> POSTs received
        self.requests = 0
        self.down = False  # answer 503 to everything
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _context(self, request: web.Request) -> web.Response:
        key = (request.match_info["cid"], request.match_info["version"])
        return (
            web.json_response({"id": key[0], "version": key[1]})
            if key in self.contexts
            else web.json_response({"error": "not found"}, status=404)
        )

    async def _post_evidence(self, request: web.Request) -> web.Response:
        body = await request.json()
        link_id = body["collector_link_id"]
        self.posts[link_id] += 1
        self.evidence.setdefault(link_id, body)
        return web.json_response({"id": f"nex-{link_id}"}, status=201)

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        if self.down:
            return web.json_response({"error": "down"}, status=503)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorised"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def start_in_thread(self) -> Self:
        started = threading.Event()
        loop = asyncio.new_event_loop()

        async def start() -> None:
            app = web.Application(middlewares=[self._gate])
            app.router.add_get("/v1/contexts/{cid}/versions/{version}", self._context)
            app.router.add_post("/v1/evidence", self._post_evidence)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(self._runner.addresses[0][1])

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(start())
            started.set()
            loop.run_forever()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="fake-nex", daemon=True)
        self._thread.start()
        started.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
