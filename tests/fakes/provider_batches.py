"""The Batch APIs of the fake teacher (tests/fakes/teacher_api.py), at the wire:

- OpenAI: the Files API (`POST /v1/files` multipart, `GET /v1/files`,
  `GET /v1/files/{id}`, `GET /v1/files/{id}/content`) and `/v1/batches`
  (create, retrieve, cancel, list) on `/v1/chat/completions`;
- Anthropic: `/v1/messages/batches` (create, retrieve, list, cancel) and its
  `results` JSONL stream.

Answers are the fake's online answers (same bodies, logprobs included for
OpenAI), so a run collected either way stores the same thing. The vendors'
limits are enforced: 50,000 requests and 200 MB per OpenAI input file,
100,000 requests and 256 MB per Anthropic batch (smaller limits can be set,
so tests need not build 200 MB). A job moves one state per poll
(validating → in_progress → finalizing → completed for OpenAI; in_progress →
ended for Anthropic), never by the clock: `hold` keeps every job in progress
until it is cleared, `expire` ends the next jobs as expired (their unfinished
requests expire), and `error_prompts` / `expire_prompts` make the requests
with those prompts error or expire.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

OPENAI_MAX_REQUESTS = 50_000
OPENAI_MAX_BYTES = 200 * 1024 * 1024
ANTHROPIC_MAX_REQUESTS = 100_000
ANTHROPIC_MAX_BYTES = 256 * 1024 * 1024
_CREATED = 1_700_000_000

_OPENAI_STEPS = ("validating", "in_progress", "finalizing", "completed")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class Job:
    """One batch job of either vendor."""

    id: str
    vendor: str  # "openai" | "anthropic"
    requests: list[dict[str, Any]]  # {"custom_id", "body"}
    state: str
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str = ""
    output_file_id: str | None = None
    error_file_id: str | None = None
    # custom_id -> the result line, once the job ended
    results: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    created_at: int = _CREATED
    ended_at: int | None = None
    errors: list[dict[str, Any]] | None = None
    polls: int = 0


class ProviderBatches:
    """The Batch APIs' state; `FakeTeacherAPI.batches` (every knob may change
    while it runs)."""

    def __init__(self, answer: Any, authorized: Any) -> None:
        # answer(path, body) -> (status, body): the fake's online answer;
        # authorized(request) -> bool: whether it presents the right key.
        self._answer = answer
        self._authorized = authorized
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self.hold = False
        self.expire = 0  # the next N jobs to end end expired
        self.error_prompts: set[str] = set()
        self.expire_prompts: set[str] = set()
        self.line_delay_s = 0.0  # between the lines of an output file it serves
        self.openai_max_requests = OPENAI_MAX_REQUESTS
        self.openai_max_bytes = OPENAI_MAX_BYTES
        self.anthropic_max_requests = ANTHROPIC_MAX_REQUESTS
        self.anthropic_max_bytes = ANTHROPIC_MAX_BYTES
        self.created: Counter[str] = Counter()  # vendor -> jobs created
        self.uploads = 0
        self.result_downloads = 0
        # Every Batch API call (after the key check) answers this status, with
        # `retry-after-ms: 1` so SDKs retry at once: a provider that is down.
        self.fail_status: int | None = None
        self.refused = 0  # calls answered `fail_status`

    def routes(self, app: web.Application) -> None:
        r = _Guarded(app.router, self._authorized, self)
        r.add_post("/v1/files", self._upload)
        r.add_get("/v1/files", self._list_files)
        r.add_get("/v1/files/{id}", self._get_file)
        r.add_get("/v1/files/{id}/content", self._file_content)
        r.add_post("/v1/batches", self._openai_create)
        r.add_get("/v1/batches", self._openai_list)
        r.add_get("/v1/batches/{id}", self._openai_retrieve)
        r.add_post("/v1/batches/{id}/cancel", self._openai_cancel)
        r.add_post("/v1/messages/batches", self._anthropic_create)
        r.add_get("/v1/messages/batches", self._anthropic_list)
        r.add_get("/v1/messages/batches/{id}", self._anthropic_retrieve)
        r.add_post("/v1/messages/batches/{id}/cancel", self._anthropic_cancel)
        r.add_get("/v1/messages/batches/{id}/results", self._anthropic_results)

    @staticmethod
    def _now() -> int:
        return int(time.time())

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # -- OpenAI Files -------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        if request.content_length and request.content_length > self.openai_max_bytes + 65536:
            return _openai_error(413, "file too large: at most 200 MB")
        form = await request.post()
        upload = form.get("file")
        purpose = str(form.get("purpose") or "")
        if not isinstance(upload, web.FileField):
            return _openai_error(400, "'file' is a required property")
        content = upload.file.read()
        if purpose != "batch":
            return _openai_error(400, f"Invalid value for purpose: {purpose!r}")
        if len(content) > self.openai_max_bytes:
            return _openai_error(400, "File is too large: batch input files hold at most 200 MB")
        stored = StoredFile(
            self._id("file-"),
            upload.filename or "upload.jsonl",
            purpose,
            content,
            self._now(),
        )
        self.files[stored.id] = stored
        self.uploads += 1
        return _ok(stored.object())

    async def _list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        items = [f for f in self.files.values() if purpose in (None, f.purpose)]
        items.sort(key=lambda f: (f.created_at, f.id), reverse=True)
        return _ok(_page(request, [f.object() for f in items]))

    async def _get_file(self, request: web.Request) -> web.Response:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return _openai_error(404, "No such File object")
        return _ok(f.object())

    async def _file_content(self, request: web.Request) -> web.StreamResponse:
        f = self.files.get(request.match_info["id"])
        if f is None:
            return _openai_error(404, "No such File object")
        if f.purpose == "batch_output":
            self.result_downloads += 1
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        if self.line_delay_s and f.purpose == "batch_output":
            for line in f.content.splitlines(keepends=True):  # a slow download
                await response.write(line)
                await asyncio.sleep(self.line_delay_s)
        else:
            for i in range(0, len(f.content), 65536):  # chunked, as a large file comes
                await response.write(f.content[i : i + 65536])
        await response.write_eof()
        return response

    # -- OpenAI Batches -----------------------------------------------------------

    async def _openai_create(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        f = self.files.get(str(body.get("input_file_id")))
        if f is None:
            return _openai_error(400, "input_file_id: no such file")
        if body.get("endpoint") != "/v1/chat/completions":
            return _openai_error(400, f"unsupported endpoint {body.get('endpoint')!r}")
        if body.get("completion_window") != "24h":
            return _openai_error(400, "completion_window must be 24h")
        job = Job(
            self._id("batch_"),
            "openai",
            [],
            "validating",
            metadata=dict(body.get("metadata") or {}),
            input_file_id=f.id,
            created_at=self._now(),
        )
        errors = []
        for n, line in enumerate(f.content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
                job.requests.append({"custom_id": item["custom_id"], "body": item["body"]})
                if item.get("url") != "/v1/chat/completions" or item.get("method") != "POST":
                    errors.append({"code": "invalid_url", "line": n, "message": "bad url/method"})
            except (orjson.JSONDecodeError, KeyError, TypeError):
                errors.append({"code": "invalid_json_line", "line": n, "message": "bad line"})
        ids = [r["custom_id"] for r in job.requests]
        if len(set(ids)) != len(ids):
            errors.append({"code": "duplicate_custom_id", "line": None, "message": "duplicate"})
        if len(job.requests) > self.openai_max_requests:
            errors.append(
                {
                    "code": "too_many_requests",
                    "line": None,
                    "message": f"at most {self.openai_max_requests} requests per batch",
                }
            )
        if errors:
            job.errors = errors  # seen at the first poll: state "failed"
        self.jobs[job.id] = job
        self.created["openai"] += 1
        return _ok(self._openai_object(job))

    async def _openai_retrieve(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.vendor != "openai":
            return _openai_error(404, "No such batch")
        self._advance(job)
        return _ok(self._openai_object(job))

    async def _openai_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.vendor != "openai":
            return _openai_error(404, "No such batch")
        if job.state in ("completed", "failed", "expired", "cancelled"):
            return _openai_error(400, f"cannot cancel a batch that is {job.state}")
        job.state = "cancelling"
        return _ok(self._openai_object(job))

    async def _openai_list(self, request: web.Request) -> web.Response:
        items = [j for j in self.jobs.values() if j.vendor == "openai"]
        items.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return _ok(_page(request, [self._openai_object(j) for j in items]))

    def _openai_object(self, job: Job) -> dict[str, Any]:
        total = len(job.requests)
        done = job.counts["succeeded"] + job.counts["errored"] + job.counts["expired"]
        return {
            "id": job.id,
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": {"object": "list", "data": job.errors} if job.errors else None,
            "input_file_id": job.input_file_id,
            "completion_window": "24h",
            "status": job.state,
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
            "created_at": job.created_at,
            "in_progress_at": job.created_at + 1 if job.state != "validating" else None,
            "expires_at": job.created_at + 86400,
            "completed_at": job.ended_at if job.state == "completed" else None,
            "failed_at": job.ended_at if job.state == "failed" else None,
            "expired_at": job.ended_at if job.state == "expired" else None,
            "cancelled_at": job.ended_at if job.state == "cancelled" else None,
            "request_counts": {
                "total": total,
                "completed": job.counts["succeeded"],
                "failed": done - job.counts["succeeded"],
            },
            "metadata": job.metadata or None,
        }

    # -- Anthropic Message Batches --------------------------------------------

    async def _anthropic_create(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if len(raw) > self.anthropic_max_bytes:
            return _anthropic_error(413, "request_too_large", "at most 256 MB per batch")
        body = orjson.loads(raw)
        requests = body.get("requests") or []
        if not requests or len(requests) > self.anthropic_max_requests:
            return _anthropic_error(
                400,
                "invalid_request_error",
                f"requests: between 1 and {self.anthropic_max_requests} items",
            )
        ids = [r.get("custom_id") for r in requests]
        if len(set(ids)) != len(ids):
            return _anthropic_error(400, "invalid_request_error", "custom_id must be unique")
        job = Job(
            self._id("msgbatch_"),
            "anthropic",
            [{"custom_id": r["custom_id"], "body": r["params"]} for r in requests],
            "in_progress",
            created_at=self._now(),
        )
        self.jobs[job.id] = job
        self.created["anthropic"] += 1
        return _ok(self._anthropic_object(job, request))

    async def _anthropic_retrieve(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.vendor != "anthropic":
            return _anthropic_error(404, "not_found_error", "No such batch")
        self._advance(job)
        return _ok(self._anthropic_object(job, request))

    async def _anthropic_list(self, request: web.Request) -> web.Response:
        items = [j for j in self.jobs.values() if j.vendor == "anthropic"]
        items.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        data = [self._anthropic_object(j, request) for j in items]
        return _ok(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )

    async def _anthropic_cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.vendor != "anthropic":
            return _anthropic_error(404, "not_found_error", "No such batch")
        if job.state == "in_progress":
            job.state = "canceling"
        return _ok(self._anthropic_object(job, request))

    async def _anthropic_results(self, request: web.Request) -> web.StreamResponse:
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.vendor != "anthropic":
            return _anthropic_error(404, "not_found_error", "No such batch")
        if job.state != "ended":
            return _anthropic_error(400, "invalid_request_error", "batch has not ended")
        self.result_downloads += 1
        response = web.StreamResponse(headers={"Content-Type": "application/binary"})
        await response.prepare(request)
        for line in job.results:
            await response.write(orjson.dumps(line) + b"\n")
        await response.write_eof()
        return response

    def _anthropic_object(self, job: Job, request: web.Request) -> dict[str, Any]:
        ended = job.state == "ended"
        processing = 0 if ended else len(job.requests)
        base = f"{request.scheme}://{request.host}"
        return {
            "id": job.id,
            "type": "message_batch",
            "processing_status": job.state,
            "request_counts": {
                "processing": processing,
                "succeeded": job.counts["succeeded"],
                "errored": job.counts["errored"],
                "canceled": job.counts["canceled"],
                "expired": job.counts["expired"],
            },
            "ended_at": _iso(job.ended_at) if ended else None,
            "created_at": _iso(job.created_at),
            "expires_at": _iso(job.created_at + 86400),
            "archived_at": None,
            "cancel_initiated_at": _iso(job.created_at + 1) if job.state == "canceling" else None,
            "results_url": f"{base}/v1/messages/batches/{job.id}/results" if ended else None,
        }

    # -- progression ------------------------------------------------------------

    def _advance(self, job: Job) -> None:
        """One step per poll; `hold` keeps a job in progress."""
        job.polls += 1
        if job.vendor == "openai":
            if job.state == "validating":
                if job.errors:
                    job.state, job.ended_at = "failed", self._now()
                else:
                    job.state = "in_progress"
            elif job.state == "in_progress" and not self.hold:
                job.state = "finalizing"
            elif job.state == "finalizing":
                self._finish(job, expired=self._take_expire())
            elif job.state == "cancelling":
                self._finish(job, cancelled=True)
            return
        if job.state == "in_progress" and not self.hold:
            self._finish(job, expired=self._take_expire())
        elif job.state == "canceling":
            self._finish(job, cancelled=True)

    def _take_expire(self) -> bool:
        if self.expire > 0:
            self.expire -= 1
            return True
        return False

    def _finish(self, job: Job, *, expired: bool = False, cancelled: bool = False) -> None:
        """Runs every request (or half of them, for a job that expires or is
        cancelled: the first half was done before) and writes the results."""
        done_before = len(job.requests) // 2 if (expired or cancelled) else len(job.requests)
        out: list[dict[str, Any]] = []
        errs: list[dict[str, Any]] = []
        for i, item in enumerate(job.requests):
            custom_id, body = item["custom_id"], item["body"]
            key = _prompt(body)
            if i >= done_before or key in self.expire_prompts:
                kind = "canceled" if cancelled and i >= done_before else "expired"
                job.counts[kind] += 1
                if job.vendor == "openai":
                    errs.append(_openai_unfinished(custom_id, kind))
                else:
                    out.append({"custom_id": custom_id, "result": {"type": kind}})
                continue
            path = "/v1/chat/completions" if job.vendor == "openai" else "/v1/messages"
            if key in self.error_prompts:
                status, answer = 400, _error_for(job.vendor, "this request was refused")
            else:
                status, answer = self._answer(path, body)
            if status == 200:
                job.counts["succeeded"] += 1
            else:
                job.counts["errored"] += 1
            if job.vendor == "openai":
                line = {
                    "id": self._id("batch_req_"),
                    "custom_id": custom_id,
                    "response": {
                        "status_code": status,
                        "request_id": self._id("req_"),
                        "body": answer,
                    },
                    "error": None,
                }
                (out if status == 200 else errs).append(line)
            elif status == 200:
                out.append(
                    {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer}}
                )
            else:
                out.append({"custom_id": custom_id, "result": {"type": "errored", "error": answer}})
        job.ended_at = self._now()
        if job.vendor == "openai":
            job.state = "cancelled" if cancelled else "expired" if expired else "completed"
            if out:
                job.output_file_id = self._store_output(job, out, "output")
            if errs:
                job.error_file_id = self._store_output(job, errs, "errors")
        else:
            job.state = "ended"
            job.results = out

    def _store_output(self, job: Job, lines: list[dict[str, Any]], what: str) -> str:
        content = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        f = StoredFile(
            self._id("file-"), f"{job.id}_{what}.jsonl", "batch_output", content, self._now()
        )
        self.files[f.id] = f
        return f.id


class _Guarded:
    """Routes whose handlers answer 401 to a wrong key, in each vendor's shape."""

    def __init__(
        self, router: web.UrlDispatcher, authorized: Any, batches: ProviderBatches
    ) -> None:
        self._router = router
        self._authorized = authorized
        self._batches = batches

    def _wrap(self, handler: Any) -> Any:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                if request.path.startswith("/v1/messages"):
                    return _anthropic_error(401, "authentication_error", "invalid x-api-key")
                return _openai_error(401, "Incorrect API key provided")
            if (status := self._batches.fail_status) is not None:
                self._batches.refused += 1
                message = f"the fake Batch API is down ({status})"
                if request.path.startswith("/v1/messages"):
                    down = _anthropic_error(status, "api_error", message)
                else:
                    down = _openai_error(status, message)
                down.headers["retry-after-ms"] = "1"
                return down
            result: web.StreamResponse = await handler(request)
            return result

        return guarded

    def add_post(self, path: str, handler: Any) -> None:
        self._router.add_post(path, self._wrap(handler))

    def add_get(self, path: str, handler: Any) -> None:
        self._router.add_get(path, self._wrap(handler))


def _prompt(body: dict[str, Any]) -> str:
    for message in reversed(list(body.get("messages") or [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else ""
    return ""


def _openai_unfinished(custom_id: str, kind: str) -> dict[str, Any]:
    if kind == "expired":
        error = {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }
    else:
        error = {"code": "batch_cancelled", "message": "This request was cancelled."}
    return {"id": None, "custom_id": custom_id, "response": None, "error": error}


def _error_for(vendor: str, message: str) -> dict[str, Any]:
    if vendor == "openai":
        return {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def _page(request: web.Request, data: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's cursor page: `after` an id, `limit` items."""
    after = request.query.get("after")
    limit = int(request.query.get("limit") or 20)
    if after:
        ids = [d["id"] for d in data]
        data = data[ids.index(after) + 1 :] if after in ids else []
    page = data[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(data) > limit,
    }


def _iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _ok(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _openai_error(status: int, message: str) -> web.Response:
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    }
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
