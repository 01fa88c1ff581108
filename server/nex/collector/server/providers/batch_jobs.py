"""Provider Batch APIs: OpenAI (Files + `/v1/batches` on `/v1/chat/completions`)
and Anthropic (`/v1/messages/batches`), through the official SDKs.

A job is named by a *marker* we choose before anything is sent (the
collector's provider-job id). It travels with the job: the OpenAI input
file's name and the batch's `metadata`, so a process that died after a call
the provider accepted but before it recorded the answer finds the file or the
batch again (`find_upload`, `find_job`) instead of sending it twice. Anthropic
batches carry no metadata: there a job is recognised by when it was created
and how many requests it holds (see `AnthropicBatches.find_job`).

Results are streamed line by line (`results`), never loaded whole. The mock
teacher has a Batch API of its own, offline (`MockBatches`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Protocol

import anthropic
import openai
import orjson

from nex.collector.server.domain.teacher import ChatMessage, GenerationParams
from nex.collector.server.domain.teachers import TeacherDirectory, TeacherEndpoint, TeacherKind
from nex.collector.server.providers.anthropic_provider import (
    DEFAULT_MAX_TOKENS,
    parse_message,
)
from nex.collector.server.providers.base import Completion, GenerationRequest
from nex.collector.server.providers.errors import provider_errors
from nex.collector.server.providers.mock_provider import MockProvider
from nex.collector.server.providers.openai_provider import (
    parse_chat_completion,
    request_body,
)

# Reads a job's input again: a binary file at its start (the caller's to close,
# by `with`), spooled to disk when large: never all of it in memory.
Content = Callable[[], Awaitable[IO[bytes]]]

# States after which a job changes no more.
ENDED = frozenset({"completed", "expired", "cancelled", "failed", "ended"})


@dataclass(frozen=True, slots=True)
class JobStatus:
    state: str  # the provider's own word (OpenAI's status, Anthropic's processing_status)
    total: int
    completed: int
    failed: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None  # why the whole job failed (e.g. validation)

    @property
    def ended(self) -> bool:
        return self.state in ENDED


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One request's result: a completion, or the provider's error."""

    custom_id: str
    completion: Completion | None = None
    error_code: str = ""
    error_message: str = ""
    # Whether trying again may help (expired, cancelled, a server error).
    retryable: bool = True


class BatchBackend(Protocol):
    # Whether a job is done as soon as it is created (poll it at once).
    instant: bool

    def request_line(self, custom_id: str, request: GenerationRequest) -> bytes:
        """One JSONL line of the job's input."""
        ...

    async def find_upload(self, marker: str) -> str | None: ...

    async def upload(self, marker: str, content: Content) -> str | None:
        """The input file's id (None: this API takes the requests inline)."""
        ...

    async def find_job(
        self, marker: str, since: datetime, total: int, known: frozenset[str]
    ) -> str | None:
        """The provider's job carrying `marker`, if it exists; `known`: ids
        other jobs of ours already hold."""
        ...

    async def create(self, marker: str, input_file_id: str | None, content: Content) -> str: ...

    async def retrieve(self, job_id: str) -> JobStatus: ...

    def results(
        self, job_id: str, status: JobStatus, content: Content
    ) -> AsyncIterator[BatchResult]:
        """The job's results, streamed. `content` reads the job's input again,
        for a backend that keeps none (the mock)."""
        ...

    async def cancel(self, job_id: str) -> None: ...

    async def aclose(self) -> None: ...


def custom_id(run_id: str, attempt: int) -> str:
    return f"{run_id}:{attempt}"


def parse_custom_id(value: str) -> tuple[str, int] | None:
    run_id, sep, attempt = value.rpartition(":")
    if not sep or not attempt.isdigit():
        return None
    return run_id, int(attempt)


def _filename(marker: str) -> str:
    return f"{marker}.jsonl"


class OpenAIBatches:
    instant = False

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float) -> None:
        self._secrets: tuple[str | None, ...] = (api_key,)
        with provider_errors(self._secrets):
            self._client = openai.AsyncOpenAI(
                api_key=api_key, base_url=base_url, timeout=timeout, max_retries=2
            )
        self._secrets = (api_key, self._client.api_key)

    def request_line(self, custom_id: str, request: GenerationRequest) -> bytes:
        line = {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": request_body(request),
        }
        return orjson.dumps(line) + b"\n"

    async def find_upload(self, marker: str) -> str | None:
        name = _filename(marker)
        with provider_errors(self._secrets):
            async for f in self._client.files.list(purpose="batch"):
                if f.filename == name:
                    return f.id
        return None

    async def upload(self, marker: str, content: Content) -> str | None:
        with await content() as data, provider_errors(self._secrets):
            f = await self._client.files.create(
                file=(_filename(marker), data, "application/jsonl"), purpose="batch"
            )
        return f.id

    async def find_job(
        self, marker: str, since: datetime, total: int, known: frozenset[str]
    ) -> str | None:
        floor = since.timestamp() - 3600  # listed newest first: stop well before ours
        with provider_errors(self._secrets):
            async for b in self._client.batches.list(limit=100):
                if (b.metadata or {}).get("nex_job") == marker:
                    return b.id
                if b.created_at < floor:
                    break
        return None

    async def create(self, marker: str, input_file_id: str | None, content: Content) -> str:
        assert input_file_id is not None
        with provider_errors(self._secrets):
            b = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"nex_job": marker},
            )
        return b.id

    async def retrieve(self, job_id: str) -> JobStatus:
        with provider_errors(self._secrets):
            b = await self._client.batches.retrieve(job_id)
        counts = b.request_counts
        error = None
        if b.errors is not None and b.errors.data:
            error = "; ".join(f"{e.code}: {e.message}" for e in b.errors.data[:5])
        return JobStatus(
            state=b.status,
            total=counts.total if counts else 0,
            completed=counts.completed if counts else 0,
            failed=counts.failed if counts else 0,
            output_file_id=b.output_file_id,
            error_file_id=b.error_file_id,
            error=error,
        )

    async def results(
        self, job_id: str, status: JobStatus, content: Content
    ) -> AsyncIterator[BatchResult]:
        for file_id in (status.output_file_id, status.error_file_id):
            if not file_id:
                continue
            with provider_errors(self._secrets):
                async with self._client.files.with_streaming_response.content(file_id) as r:
                    async for line in r.iter_lines():
                        if line.strip():
                            yield _openai_result(orjson.loads(line))

    async def cancel(self, job_id: str) -> None:
        # A job that ended meanwhile cannot be cancelled: nothing to do.
        with provider_errors(self._secrets), contextlib.suppress(openai.BadRequestError):
            await self._client.batches.cancel(job_id)

    async def aclose(self) -> None:
        await self._client.close()


def _openai_result(line: dict[str, Any]) -> BatchResult:
    cid = str(line.get("custom_id") or "")
    response = line.get("response")
    if response and response.get("status_code") == 200:
        return BatchResult(cid, parse_chat_completion(response["body"]))
    if response:
        status = int(response.get("status_code") or 0)
        err = (response.get("body") or {}).get("error") or {}
        return BatchResult(
            cid,
            error_code=_status_code(status),
            error_message=str(err.get("message") or f"HTTP {status}"),
            retryable=status >= 500 or status in (408, 409, 429),
        )
    err = line.get("error") or {}
    code = str(err.get("code") or "batch_error")
    return BatchResult(
        cid,
        error_code="PROVIDER_BATCH_" + code.upper().removeprefix("BATCH_"),
        error_message=str(err.get("message") or code),
        retryable=True,
    )


def _status_code(status: int) -> str:
    if status in (400, 404, 422):
        return "PROVIDER_BAD_REQUEST"
    if status in (401, 403):
        return "PROVIDER_AUTH"
    if status == 429:
        return "PROVIDER_RATE_LIMITED"
    return "PROVIDER_ERROR"


class AnthropicBatches:
    instant = False

    def __init__(self, api_key: str | None, base_url: str | None, timeout: float) -> None:
        with provider_errors((api_key,)):
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=base_url, timeout=timeout, max_retries=2
            )
        self._secrets = (api_key, self._client.api_key, self._client.auth_token)

    def request_line(self, custom_id: str, request: GenerationRequest) -> bytes:
        params = request.params
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
        }
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        return orjson.dumps({"custom_id": custom_id, "params": body}) + b"\n"

    async def find_upload(self, marker: str) -> str | None:
        return None

    async def upload(self, marker: str, content: Content) -> str | None:
        return None  # the requests go inline with `create`

    async def find_job(
        self, marker: str, since: datetime, total: int, known: frozenset[str]
    ) -> str | None:
        """Anthropic keeps no metadata on a batch: ours is one created since we
        started submitting it (a minute's clock skew allowed) with our count of
        requests that no other job of ours holds. Two collectors submitting
        equal-sized jobs to one account in the same minute could confuse this;
        results are matched by custom_id, so a wrong guess loses nothing but
        sends those runs once more."""
        floor = since - timedelta(minutes=1)
        with provider_errors(self._secrets):
            async for b in self._client.messages.batches.list(limit=100):
                created = b.created_at if b.created_at.tzinfo else b.created_at.replace(tzinfo=UTC)
                if created < floor:
                    break
                c = b.request_counts
                n = c.processing + c.succeeded + c.errored + c.canceled + c.expired
                if n == total and b.id not in known:
                    return b.id
        return None

    async def create(self, marker: str, input_file_id: str | None, content: Content) -> str:
        # The API takes the requests in one JSON body (at most 256 MB).
        with await content() as data:
            requests = [orjson.loads(line) for line in data if line.strip()]
        with provider_errors(self._secrets):
            b = await self._client.messages.batches.create(requests=requests)
        return b.id

    async def retrieve(self, job_id: str) -> JobStatus:
        with provider_errors(self._secrets):
            b = await self._client.messages.batches.retrieve(job_id)
        c = b.request_counts
        total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
        return JobStatus(
            state=b.processing_status,
            total=total,
            completed=c.succeeded,
            failed=c.errored + c.canceled + c.expired,
        )

    async def results(
        self, job_id: str, status: JobStatus, content: Content
    ) -> AsyncIterator[BatchResult]:
        with provider_errors(self._secrets):
            decoder = await self._client.messages.batches.results(job_id)
            async for item in decoder:
                yield _anthropic_result(item.custom_id, item.result.model_dump(mode="json"))

    async def cancel(self, job_id: str) -> None:
        with provider_errors(self._secrets):
            await self._client.messages.batches.cancel(job_id)

    async def aclose(self) -> None:
        await self._client.close()


def _anthropic_result(cid: str, result: dict[str, Any]) -> BatchResult:
    kind = result.get("type")
    if kind == "succeeded":
        return BatchResult(cid, parse_message(result["message"]))
    if kind == "errored":
        err = (result.get("error") or {}).get("error") or {}
        etype = str(err.get("type") or "api_error")
        return BatchResult(
            cid,
            error_code="PROVIDER_BAD_REQUEST"
            if etype == "invalid_request_error"
            else "PROVIDER_ERROR",
            error_message=str(err.get("message") or etype),
            retryable=etype not in ("invalid_request_error", "authentication_error"),
        )
    return BatchResult(
        cid,
        error_code="PROVIDER_BATCH_" + str(kind or "unknown").upper(),
        error_message=f"the request was {kind} inside the provider batch job",
    )


class MockBatches:
    """The mock teacher's Batch API, offline: a job is done as soon as it is
    created, its answers are the mock's online answers (made again from the
    job's input when its results are read, so nothing is kept in memory and a
    restart loses nothing). Ids derive from our marker, so finding a job
    again is trivial."""

    instant = True

    def __init__(self, name: str) -> None:
        self._mock = MockProvider(name=name)

    def request_line(self, custom_id: str, request: GenerationRequest) -> bytes:
        line = {
            "custom_id": custom_id,
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "params": {**dataclasses.asdict(request.params), "stop": list(request.params.stop)},
        }
        return orjson.dumps(line) + b"\n"

    async def find_upload(self, marker: str) -> str | None:
        return f"mockfile-{marker}"

    async def upload(self, marker: str, content: Content) -> str | None:
        return f"mockfile-{marker}"

    async def find_job(
        self, marker: str, since: datetime, total: int, known: frozenset[str]
    ) -> str | None:
        return f"mockbatch-{marker}"

    async def create(self, marker: str, input_file_id: str | None, content: Content) -> str:
        return f"mockbatch-{marker}"

    async def retrieve(self, job_id: str) -> JobStatus:
        return JobStatus(state="completed", total=0, completed=0, failed=0)

    async def results(
        self, job_id: str, status: JobStatus, content: Content
    ) -> AsyncIterator[BatchResult]:
        with await content() as data:
            lines = [orjson.loads(raw) for raw in data if raw.strip()]
        for line in lines:
            params = dict(line["params"])
            params["stop"] = tuple(params.get("stop") or ())
            request = GenerationRequest(
                line["model"],
                [ChatMessage(m["role"], m["content"]) for m in line["messages"]],
                GenerationParams(**params),
            )
            yield BatchResult(line["custom_id"], await self._mock.generate(request))

    async def cancel(self, job_id: str) -> None:
        return None

    async def aclose(self) -> None:
        await self._mock.aclose()


def build_batch_backend(
    teacher: TeacherEndpoint, api_key: str | None, base_url: str | None, *, timeout: float
) -> BatchBackend:
    if teacher.kind in (TeacherKind.OPENAI, TeacherKind.OPENAI_COMPATIBLE):
        return OpenAIBatches(api_key, base_url, timeout)
    if teacher.kind is TeacherKind.ANTHROPIC:
        return AnthropicBatches(api_key, base_url, timeout)
    if teacher.kind is TeacherKind.MOCK:
        return MockBatches(teacher.name)
    raise ValueError(f"teacher {teacher.name!r} has no Batch API")


def lines_of(requests: Sequence[tuple[str, GenerationRequest]], backend: BatchBackend) -> bytes:
    return b"".join(backend.request_line(cid, r) for cid, r in requests)


class BatchBackends:
    """One backend per teacher for a process, made on first use."""

    def __init__(
        self,
        teachers: TeacherDirectory,
        credentials: Callable[[TeacherEndpoint], tuple[str | None, str | None]],
        *,
        timeout: float,
    ) -> None:
        self._teachers = teachers
        self._credentials = credentials
        self._timeout = timeout
        self._backends: dict[str, BatchBackend] = {}

    def get(self, name: str) -> BatchBackend:
        backend = self._backends.get(name)
        if backend is None:
            teacher = self._teachers.get(name)
            if teacher is None:
                raise ValueError(f"unknown teacher {name!r}")
            key, url = self._credentials(teacher)
            backend = build_batch_backend(teacher, key, url, timeout=self._timeout)
            self._backends[name] = backend
        return backend

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for b in backends:
            await b.aclose()
