"""Structured logs: one line per record with the request id; JSON when LOG_JSON=1."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
"""The id of the gRPC call being handled (set by the server's interceptor)."""


class RequestIdFilter(logging.Filter):
    """Adds the current request id to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure(level: str = "INFO", *, json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_sdk_transport(level)
    for noisy in (
        "asyncio",
        "alembic",
        "pgserver",
        "aiohttp.access",
        "arq.worker",
        "arq.jobs",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# The SDKs' HTTP transport logs one INFO line per request ("HTTP Request: POST …"):
# 100,000 runs wrote 100,000 of them.
# The SDKs ship on httpx2 / httpcore2 (loggers named so), plain httpx elsewhere.
SDK_TRANSPORT_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "anthropic")


def quiet_sdk_transport(level: str) -> None:
    """Per-request lines of the teacher SDKs are off unless LOG_LEVEL is DEBUG.
    Called by `configure` and by every collector process (runtime.run)."""
    debug = level.upper() == "DEBUG"
    for name in SDK_TRANSPORT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
