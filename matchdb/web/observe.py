"""The access log and the request metrics: one log line and one count per answered request.

:class:`Observer` wraps the guard (:mod:`matchdb.web.guard`), so it sees the status the client really got (a 500
or 503 the guard made of an exception included). What it reports comes from the request's state: the guard's
``request_id``, the API method's name (set by the route, see :mod:`matchdb.web.operations`), and the workspace and
record count (set by :func:`matchdb.web.stateless.api_method`). The collection is the ``collection-id`` header.

Log lines are readable text by default, one JSON object per line with ``MATCHDB_LOG_FORMAT=json``; both carry the
same fields (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matchdb import metrics

access_log = logging.getLogger("matchdb.access")
UNMATCHED = "unmatched"  # the method label of a request no route took (404, 405)
_IN_MESSAGE = {"method", "path", "status", "duration_ms"}  # the text format's message says them already
MAX_MESSAGE_CHARS = 4000  # a log message, and separately a traceback, longer than this keeps its two ends
MAX_TRACEBACK_CHARS = 16000


Endpoint = Callable[[Request], Awaitable[Response]]


def labelled(endpoint: Endpoint, name: str) -> Endpoint:
    """``endpoint``, which first names the request's method (``name``) for the access log and the metrics."""

    async def named(request: Request) -> Response:
        request.state.operation = name
        return await endpoint(request)

    return named


class Observer:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                # Counted before the answer leaves, so a client that has its answer finds it counted.
                metrics.REQUESTS.labels(_operation(scope), str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status is None:  # nothing was sent at all: the server answers 500
                status = 500
                metrics.REQUESTS.labels(_operation(scope), str(status)).inc()
            self._report(scope, status, time.perf_counter() - started)

    @staticmethod
    def _report(scope: Scope, status: int, seconds: float) -> None:
        state: dict[str, Any] = scope.get("state", {})
        operation = _operation(scope)
        metrics.LATENCY.labels(operation).observe(seconds)
        collection = _header(scope, b"collection-id")
        fields = {
            "method": scope.get("method", ""),
            "path": scope.get("path", ""),
            "operation": operation,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "records": state.get("records"),
            "collection": collection[:200] if collection else None,
            "workspace": state.get("workspace"),
        }
        access_log.info(
            "%s %s %s %.1f ms", fields["method"], _text_value(fields["path"]), status, seconds * 1000,
            extra={"fields": fields, "request_id": state.get("request_id")},
        )  # fmt: skip


def _operation(scope: Scope) -> str:
    return str(scope.get("state", {}).get("operation", UNMATCHED))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``: the access line's fields and the request id, then any
    traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name} {_message(record)}"
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        fields = {k: v for k, v in fields.items() if k not in _IN_MESSAGE}
        fields["request_id"] = getattr(record, "request_id", None)
        extras = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        line = f"{line} {extras}" if extras else line
        if record.exc_info:
            line += "\n" + bounded(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return line


def _text_value(value: Any) -> str:
    """A field's value in a text line: ``-`` for none, quoted (JSON) when it has spaces or control characters, so
    a header value can never fake another field or line."""
    if value is None:
        return "-"
    text = str(value)
    return text if text and text.isprintable() and " " not in text and '"' not in text else json.dumps(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, the access fields, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
            "request_id": getattr(record, "request_id", None),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = bounded(self.formatException(record.exc_info), MAX_TRACEBACK_CHARS)
        return json.dumps(entry, ensure_ascii=False, default=str)


def bounded(text: str, limit: int) -> str:
    """``text``, or its two ends when it is longer than ``limit``: an error's message can quote a whole SQL
    statement, and one line of megabytes fills disks and log shippers."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ...[{len(text) - 2 * half} characters cut]... {text[-half:]}"


def _message(record: logging.LogRecord) -> str:
    return bounded(record.getMessage(), MAX_MESSAGE_CHARS)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so that it replaces its own, not anyone else's)."""


def configure_logging(log_format: str) -> None:
    """Send the ``matchdb`` loggers (errors, warnings, the access log) to stderr in ``log_format`` (text or json).
    They still propagate, so a test's log capture sees them too."""
    logger = logging.getLogger("matchdb")
    for handler in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(handler)
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
