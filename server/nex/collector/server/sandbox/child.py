"""A sandbox process: compiles and renders templates for the server, one request
at a time, under an address-space limit and a CPU-time limit per request.

    python -m nex.collector.server.sandbox.child '{"marker_fd": 3, "cpu_s": 5, "memory_mb": 1024}'

Exceeding the CPU limit kills the process (SIGXCPU): a big-integer operation
holds the interpreter for minutes and no Python-level timer could interrupt it.
The server then names the culprit from the shared marker page, replaces the
process, and answers INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
import json
import math
import mmap
import os
import resource
import signal
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from nex.collector.server.domain.templates import (
    SOURCE_FIELDS,
    RenderFailed,
    compile_template,
    describe,
    render_prompt,
    template_problems,
)
from nex.collector.server.sandbox.protocol import (
    MARKER,
    MARKER_SIZE,
    Message,
    read_frame,
    write_frame,
)

MAX_RENDERED_CHARS_PER_CALL = 64_000_000


class CompiledCache:
    """Compiled templates by source, least recently used first out; bounded by
    count and by total source size. Only sources that compiled are kept."""

    def __init__(self, max_entries: int = 64, max_chars: int = 4_000_000) -> None:
        self._items: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._chars = 0
        self._max_entries, self._max_chars = max_entries, max_chars

    def get(self, source: str) -> jinja2.Template:
        found = self._items.get(source)
        if found is not None:
            self._items.move_to_end(source)
            return found
        compiled = compile_template(source)  # raises: nothing is kept
        self._items[source] = compiled
        self._chars += len(source)
        while self._items and (
            len(self._items) > self._max_entries or self._chars > self._max_chars
        ):
            old, _ = self._items.popitem(last=False)
            self._chars -= len(old)
        return compiled

    def __len__(self) -> int:
        return len(self._items)


class Sandbox:
    def __init__(self, marker: mmap.mmap, cpu_s: float) -> None:
        self._marker = marker
        self._cpu_s = cpu_s
        self.cache = CompiledCache()

    def handle(self, request: Message) -> Message:
        self._mark(-1, -1)
        self._limit_cpu()
        if request["op"] == "check":
            return self._check(request["sources"], request["declared"])
        if request["op"] == "render":
            return self._render(request["sources"], request["runs"])
        if request["op"] == "stats":
            return {"cached": len(self.cache)}
        raise ValueError(f"unknown op {request['op']!r}")

    def _check(self, sources: Sequence[tuple[str, str]], declared: Sequence[str]) -> dict[str, Any]:
        violations = []
        for k, (field, source) in enumerate(sources):
            self._mark(-1, k)
            violations += [[field, p] for p in template_problems(source, declared)]
        return {"violations": violations}

    def _render(
        self, sources: Sequence[str | None], runs: Sequence[Mapping[str, str]]
    ) -> dict[str, Any]:
        compiled = []
        for k, source in enumerate(sources):
            self._mark(-1, k)
            try:
                compiled.append(self.cache.get(source) if source else None)
            except Exception as exc:
                return {"failed": [-1, k, f"does not compile: {describe(exc)}"]}
        rendered: list[list[str]] = []
        total = 0
        for i, variables in enumerate(runs):
            try:
                messages = render_prompt(
                    compiled,
                    variables,
                    i,
                    functools.partial(self._mark, i),
                )
            except RenderFailed as exc:
                return {"failed": [exc.index, SOURCE_FIELDS.index(exc.field), exc.description]}
            contents = [m.content for m in messages]
            total += sum(len(c) for c in contents)
            if total > MAX_RENDERED_CHARS_PER_CALL:
                return {
                    "failed": [
                        i,
                        len(sources) - 1,
                        f"the prompts of this call pass {MAX_RENDERED_CHARS_PER_CALL:,} "
                        "characters; split the runs over several calls",
                    ]
                }
            rendered.append(contents)
        return {"messages": rendered}

    def _mark(self, index: int, source: int) -> None:
        MARKER.pack_into(self._marker, 0, index, source)

    def _limit_cpu(self) -> None:
        """This request may use `cpu_s` more seconds of CPU; then the kernel kills us."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + self._cpu_s)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _limit_memory(memory_mb: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core
    limit = memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: Sequence[str]) -> int:
    config = json.loads(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us, not the terminal
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the frames
    requests = sys.stdin.buffer
    marker = mmap.mmap(config["marker_fd"], MARKER_SIZE)
    _limit_memory(int(config["memory_mb"]))
    sandbox = Sandbox(marker, float(config["cpu_s"]))
    write_frame(replies, {"ready": os.getpid()})
    while (request := read_frame(requests)) is not None:
        try:
            reply = sandbox.handle(request)
        except Exception as exc:  # MemoryError outside a render, …
            index, source = MARKER.unpack_from(marker, 0)
            reply = {"failed": [index, source, describe(exc)]}
        write_frame(replies, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
