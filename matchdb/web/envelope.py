"""The Ximilar response envelope, built in one place: ``status``, ``statistics`` and the per-record ``_status``.

    ApiError            a request-level failure: HTTP status + Ximilar status code + text (400, 401, 403, 404, 413, 503)

Handlers raise :class:`ApiError`; the app's exception handler renders it with :func:`error_response`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from matchdb.errors import MatchdbError
from matchdb.service.records import LoadedRecord


def encode_json(content: Any) -> bytes:
    """JSON that never fails to render: a lone surrogate echoed from a request is written escaped (``\\ud800``),
    as the caller sent it, instead of breaking UTF-8 encoding."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ApiResponse(JSONResponse):
    """A JSON response rendered by :func:`encode_json`."""

    def render(self, content: Any) -> bytes:
        return encode_json(content)


class ApiError(MatchdbError):
    """A request the API refuses as a whole."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class RequestContext:
    """Per-request identity and clock for the envelope."""

    proc_id: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.perf_counter)

    def status(self, code: int, text: str) -> dict[str, Any]:
        return {"code": code, "text": text, "request_id": self.request_id, "proc_id": self.proc_id}

    def record_status(self, code: int, text: str) -> dict[str, Any]:
        return {"code": code, "text": text, "request_id": self.request_id}

    def respond(self, body: dict[str, Any], code: int = 200, text: str = "OK") -> JSONResponse:
        """Add ``status`` and ``statistics`` to ``body``; HTTP 200 for 200 and 300 (MIXED_RESULT), else ``code``.
        A 503 (retry later) says when: ``Retry-After``."""
        headers = {"Retry-After": "1"} if code == 503 else None
        status_code = 200 if code in (200, 300) else code
        return ApiResponse(self.envelope(body, code, text), status_code=status_code, headers=headers)

    def envelope(self, body: dict[str, Any], code: int = 200, text: str = "OK") -> dict[str, Any]:
        """``body`` with ``status`` and ``statistics`` (the processing time until now) added."""
        body["status"] = self.status(code, text)
        body["statistics"] = {"processing time": time.perf_counter() - self.started}
        return body


def request_context(request: Request) -> RequestContext:
    """The envelope's context of ``request``, with the request_id the app's guard gave it (the one it logs)."""
    request_id = request.scope.get("state", {}).get("request_id")
    proc_id: str = request.app.state.proc_id
    return RequestContext(proc_id, request_id) if request_id else RequestContext(proc_id)


def stamp_statuses(context: RequestContext, loaded: Sequence[LoadedRecord]) -> None:
    """Give every loaded record its ``_status`` (OK or why it failed)."""
    for item in loaded:
        failure = item.failure
        item.record["_status"] = (
            context.record_status(200, "OK") if failure is None else context.record_status(failure.code, failure.text)
        )


def batch_outcome(loaded: Sequence[LoadedRecord]) -> tuple[int, str]:
    """200 OK when every record loaded, 300 MIXED_RESULT when some did, 400 when none did."""
    failed = sum(item.failure is not None for item in loaded)
    if failed == 0:
        return 200, "OK"
    if failed < len(loaded):
        return 300, "MIXED_RESULT"
    return 400, "Error: no record could be processed (see each record's _status)"


def error_response(context: RequestContext, status: int, text: str) -> JSONResponse:
    return context.respond({}, status, text)
