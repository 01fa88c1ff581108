"""The server's side of the template sandbox: a few child processes, each taking
one request at a time; a child that passes its limits is killed and replaced,
and the request that killed it is answered with the run and the cause.

Why processes and not threads: one big-integer operation holds the GIL for
minutes, so a thread would freeze the event loop (health included). Why not
ProcessPoolExecutor: it cannot kill one stuck task, and a dead worker breaks the
whole pool; here only the guilty child is replaced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from nex.collector.server.domain.errors import FieldViolation, Unavailable
from nex.collector.server.domain.teacher import ChatMessage
from nex.collector.server.domain.templates import SOURCE_FIELDS, PromptTemplate, RenderFailed
from nex.collector.server.sandbox import protocol

log = logging.getLogger(__name__)

# What a child inherits from the server's environment: enough to start Python,
# and no secret (API keys, tokens, database passwords).
_INHERITED_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR")


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """cpu_s: CPU seconds one request may use (compile and all renders of a
    call; the kernel counts whole seconds, so the real limit is up to one second
    more). memory_mb: a child's address space. wall_s: how long a request may
    take before its child is killed (default 4 * cpu_s + 5, for a loaded host).
    queue_s: how long a request waits for a free child."""

    cpu_s: float = 5.0
    memory_mb: int = 1024
    processes: int = 2
    wall_s: float | None = None
    queue_s: float = 60.0
    start_s: float = 60.0

    @property
    def wall_timeout_s(self) -> float:
        return self.wall_s if self.wall_s is not None else 4 * self.cpu_s + 5


class _Died(Exception):
    def __init__(self, cause: str, marker: tuple[int, int]) -> None:
        super().__init__(cause)
        self.cause, self.marker = cause, marker


class _Child:
    """One sandbox process and the shared page where it marks its progress."""

    def __init__(self, proc: asyncio.subprocess.Process, marker: IO[bytes]) -> None:
        self.proc = proc
        self._marker = marker

    @classmethod
    async def spawn(cls, limits: SandboxLimits) -> _Child:
        marker = tempfile.TemporaryFile(prefix="nexc-sandbox-")  # noqa: SIM115 (closed by close())
        try:
            marker.write(protocol.MARKER.pack(-1, -1).ljust(protocol.MARKER_SIZE, b"\0"))
            marker.flush()
            config = {"marker_fd": marker.fileno(), "cpu_s": limits.cpu_s}
            config["memory_mb"] = limits.memory_mb
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "nex.collector.server.sandbox.child",
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(marker.fileno(),),
                env={k: v for k, v in os.environ.items() if k in _INHERITED_ENV},
                start_new_session=True,  # Ctrl-C in a terminal reaches the server only
                limit=2**20,
            )
        except BaseException:
            marker.close()
            raise
        child = cls(proc, marker)
        try:
            async with asyncio.timeout(limits.start_s):
                hello = await child._read()
            if "ready" not in hello:
                raise RuntimeError(f"unexpected first message {hello!r}")
        except BaseException:
            await child.close()
            raise
        return child

    async def call(self, payload: bytes) -> protocol.Message:
        """Sends one request and reads its reply; _Died when the child dies."""
        stdin = self.proc.stdin
        assert stdin is not None
        os.pwrite(self._marker.fileno(), protocol.MARKER.pack(-1, -1), 0)
        try:
            stdin.write(payload)
            await stdin.drain()
            return await self._read()
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            returncode = await self.proc.wait()
            raise _Died(_cause_of_exit(returncode), self.marker()) from exc

    async def _read(self) -> protocol.Message:
        stdout = self.proc.stdout
        assert stdout is not None
        header = await stdout.readexactly(protocol.header_size())
        return protocol.decode(await stdout.readexactly(protocol.body_size(header)))

    def marker(self) -> tuple[int, int]:
        index, source = protocol.MARKER.unpack(os.pread(self._marker.fileno(), 8, 0))
        return int(index), int(source)

    async def close(self, *, grace_s: float = 2.0) -> None:
        """Ends the child: EOF on its stdin, then a kill after `grace_s`."""
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                async with asyncio.timeout(grace_s):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._marker.close()


def _cause_of_exit(returncode: int) -> str:
    if returncode == -signal.SIGXCPU:
        return "cpu"
    return f"exit status {returncode}" if returncode >= 0 else f"signal {-returncode}"


class TemplateSandbox:
    """Checks and renders templates in child processes (a TemplateEngine).

    A call is one request to one child: the renders of a whole BatchCreateRuns go
    together, so a run costs microseconds here, not a process round trip."""

    def __init__(self, limits: SandboxLimits | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Starts the child processes (else the first request does)."""
        async with self._lock:
            if self._started or self._closed:
                return
            children = await asyncio.gather(
                *(_Child.spawn(self.limits) for _ in range(self.limits.processes)),
                return_exceptions=True,
            )
            for child in children:
                if isinstance(child, _Child):
                    self._adopt(child)
            failures = [c for c in children if isinstance(c, BaseException)]
            if failures:
                await self.aclose()
                raise RuntimeError(f"cannot start the template sandbox: {failures[0]!r}")
            self._started = True

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        children, self._children = list(self._children), set()
        await asyncio.gather(*(c.close() for c in children), return_exceptions=True)

    @property
    def processes(self) -> int:
        """Live sandbox processes."""
        return len(self._children)

    # -- TemplateEngine -------------------------------------------------------------

    async def check(
        self, sources: Sequence[tuple[str, str]], declared: Sequence[str]
    ) -> list[FieldViolation]:
        if not sources:
            return []
        reply = await self._request(
            {"op": "check", "sources": [list(s) for s in sources], "declared": list(declared)}
        )
        if "failed" in reply:
            _, k, description = reply["failed"]
            field = sources[k][0] if 0 <= k < len(sources) else sources[0][0]
            return [FieldViolation(field, f"template could not be checked: {description}")]
        return [FieldViolation(f, d) for f, d in reply["violations"]]

    async def render(
        self, template: PromptTemplate, runs: Sequence[Mapping[str, str]]
    ) -> list[list[ChatMessage]]:
        if not runs:
            return []
        sources = [template.system_template or None, template.user_template]
        reply = await self._request({"op": "render", "sources": sources, "runs": list(runs)})
        if "failed" in reply:
            index, k, description = reply["failed"]
            field = SOURCE_FIELDS[k] if 0 <= k < len(SOURCE_FIELDS) else SOURCE_FIELDS[1]
            raise RenderFailed(index, field, description)
        roles = ["system", "user"] if template.system_template else ["user"]
        return [
            [ChatMessage(role, content) for role, content in zip(roles, contents, strict=True)]
            for contents in reply["messages"]
        ]

    async def cached_templates(self) -> list[int]:
        """How many compiled templates each idle child holds (for tests)."""
        counts = []
        for _ in range(self.limits.processes):
            counts.append((await self._request({"op": "stats"}))["cached"])
        return counts

    # -- plumbing -------------------------------------------------------------------

    async def _request(self, message: Mapping[str, Any]) -> protocol.Message:
        """The child's reply; a child that dies or overruns yields a "failed" reply
        naming the run and source it was working on."""
        payload = protocol.encode(message)
        child = await self._acquire()
        try:
            async with asyncio.timeout(self.limits.wall_timeout_s):
                reply = await child.call(payload)
        except _Died as died:
            self._replace(child, died.cause)
            return {"failed": [*died.marker, self._describe(died.cause)]}
        except TimeoutError:
            marker = child.marker()
            self._replace(child, "timeout")
            return {"failed": [*marker, self._describe("timeout")]}
        except BaseException:  # cancelled mid-request: the child's state is unknown
            self._replace(child, "cancelled")
            raise
        self._idle.put_nowait(child)
        return reply

    def _describe(self, cause: str) -> str:
        if cause == "cpu":
            return f"exceeded the CPU time limit ({self.limits.cpu_s:g} s)"
        if cause == "timeout":
            return f"took longer than {self.limits.wall_timeout_s:g} s"
        return f"stopped the sandbox process ({cause}; memory limit {self.limits.memory_mb} MB)"

    async def _acquire(self) -> _Child:
        if self._closed:
            raise Unavailable("the server is shutting down", reason="SHUTTING_DOWN")
        if not self._started:
            await self.start()
        try:
            async with asyncio.timeout(self.limits.queue_s):
                return await self._idle.get()
        except TimeoutError:
            raise Unavailable(
                "every template sandbox process is busy; retry later", reason="SANDBOX_BUSY"
            ) from None

    def _adopt(self, child: _Child) -> None:
        self._children.add(child)
        self._idle.put_nowait(child)

    def _replace(self, child: _Child, cause: str) -> None:
        """Kills `child` and starts another in its place, in the background."""
        log.warning("template sandbox process %s stopped (%s); replacing it", child.proc.pid, cause)
        self._children.discard(child)
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        task = asyncio.create_task(self._respawn(child), name="sandbox-respawn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self, dead: _Child) -> None:
        await dead.close(grace_s=0)
        delay = 0.1
        while not self._closed:
            try:
                child = await _Child.spawn(self.limits)
            except Exception as exc:
                log.error("cannot start a template sandbox process: %r; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if self._closed:
                await child.close()
            else:
                self._adopt(child)
            return
