"""Request bodies: read with a size cap, their shape counted as they arrive, parsed off the event loop.

What one request may cost before its handler runs (docs/security.md):

- its bytes, at most ``MATCHDB_MAX_BODY_BYTES`` (a larger ``Content-Length`` is a 413 before any byte is read);
- the objects ``json.loads`` builds, at most ``MATCHDB_MAX_JSON_VALUES`` values nested at most
  ``MATCHDB_MAX_JSON_DEPTH`` deep, counted by :class:`~matchdb.web.jsonshape.JsonShape` while the body streams in;
  past a limit the rest is read and dropped (nothing kept) and the answer is a 400 naming it;
- the parse itself: bodies above :data:`INLINE_BYTES` are parsed in a worker thread, at most
  ``MATCHDB_PARSE_CONCURRENCY`` at a time per process, so the event loop keeps answering (``/healthz`` included).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.requests import Request

from matchdb.config import Settings
from matchdb.web.envelope import ApiError
from matchdb.web.jsonshape import JsonShape, ShapeLimit

INLINE_BYTES = 64 * 1024  # smaller bodies parse on the event loop: well under a millisecond, less than a thread hop


class BodyReader:
    """One per server process (built in the app's lifespan, inside the event loop, which the limiter needs)."""

    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.max_body_bytes
        self.max_values = settings.max_json_values
        self.max_depth = settings.max_json_depth
        self._parsing = anyio.CapacityLimiter(settings.parse_concurrency)

    async def read(self, request: Request) -> dict[str, Any]:
        """The JSON object in the body (``{}`` for an empty body); 413 past the size cap, 400 past a shape limit or
        for anything that is not a JSON object."""
        body = await self._receive(request)
        if not body.strip():
            return {}
        if len(body) <= INLINE_BYTES:
            return parse_object(body)
        return await anyio.to_thread.run_sync(parse_object, body, limiter=self._parsing)

    async def _receive(self, request: Request) -> bytearray:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        shape = JsonShape(self.max_values, self.max_depth)
        body = bytearray()
        received = 0
        refused: ShapeLimit | None = None
        async for chunk in request.stream():
            received += len(chunk)
            if received > self.max_bytes:
                raise self._too_large()
            if refused is not None:
                continue  # read to the end, so the client gets its 400 rather than a reset connection
            try:
                shape.feed(chunk)
            except ShapeLimit as exc:
                refused, body = exc, bytearray()
                continue
            body += chunk
        if refused is not None:
            setting = "MATCHDB_MAX_JSON_DEPTH" if refused.depth else "MATCHDB_MAX_JSON_VALUES"
            raise ApiError(400, f"Request body too complex: {refused} (limit {setting})")
        return body

    def _too_large(self) -> ApiError:
        return ApiError(413, f"Request body too large: more than {self.max_bytes} bytes")


def parse_object(body: bytes | bytearray) -> dict[str, Any]:
    """``body`` as a JSON object; a 400 saying why when it is not one (NaN and Infinity are not JSON)."""
    try:
        parsed = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ApiError(400, "Invalid JSON in request body: nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, NaN/Infinity, integers past Python's digit limit
        raise ApiError(400, f"Invalid JSON in request body: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return parsed


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
