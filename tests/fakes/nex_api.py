"""A real local HTTP server playing NEX: context versions it knows, evidence it
accepts (dropping repeats by collector_link_id), a switch to be down, and counters.

Also runnable, to try integrated mode by hand (see the README):
``python -m tests.fakes.nex_api --port 8765 --context handbook@7``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections import Counter
from typing import Any, Self

from aiohttp import web


class FakeNex:
    def __init__(self, token: str = "nex-token", *, verbose: bool = False) -> None:
        self.token = token
        self.verbose = verbose  # print one line per request
        self.contexts: set[tuple[str, str]] = set()
        self.evidence: dict[str, dict[str, Any]] = {}  # collector_link_id -> body, first accepted
        self.posts: Counter[str] = Counter()  # collector_link_id -> POSTs received
        self.requests = 0
        self.down = False  # answer 503 to everything
        # Clear it to keep each POST /v1/evidence waiting until it is set again;
        # post_held is set once a POST is being kept waiting.
        self.posts_released = threading.Event()
        self.posts_released.set()
        self.post_held = threading.Event()
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
        if not self.posts_released.is_set():
            self.post_held.set()
            await asyncio.to_thread(self.posts_released.wait)
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
        if self.verbose:
            print(f"{request.method} {request.path} -> {response.status}", flush=True)
        return response

    async def serve(self, port: int) -> web.AppRunner:
        """Starts serving on 127.0.0.1:``port`` (0: any free port)."""
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/v1/contexts/{cid}/versions/{version}", self._context)
        app.router.add_post("/v1/evidence", self._post_evidence)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self.port = int(runner.addresses[0][1])
        return runner

    def start_in_thread(self) -> Self:
        started = threading.Event()
        loop = asyncio.new_event_loop()

        async def start() -> None:
            self._runner = await self.serve(0)

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


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake NEX for trying integrated mode.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="nex-token", help="the NEX_API_TOKEN it accepts")
    parser.add_argument(
        "--context", action="append", default=[], metavar="ID@VERSION",
        help="a context version NEX knows (repeat for each)",
    )  # fmt: skip
    args = parser.parse_args()
    fake = FakeNex(args.token, verbose=True)
    for item in args.context:
        cid, _, version = item.rpartition("@")
        if not cid:
            parser.error(f"--context takes ID@VERSION, got {item!r}")
        fake.contexts.add((cid, version))

    async def run() -> None:
        await fake.serve(args.port)
        print(f"fake NEX on {fake.base_url} (token {fake.token}), knows {sorted(fake.contexts)}")
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
