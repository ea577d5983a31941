"""The app's error boundary (inside only the access log): every request gets an answer in the Ximilar envelope,
whatever fails inside.

Every answer says ``X-Content-Type-Options: nosniff``; a path with a NUL is a 404 here, before any route.

It gives each request its ``request_id`` (``request.state.request_id``, used by the envelope), so the id in a 500's
body is the one in the log: the caller's ``X-Request-ID`` when it is a short printable token (1-128 characters
of letters, digits and ``._:/+=@-``), a fresh UUID otherwise; every answer echoes it in ``X-Request-ID``.

Any exception that escapes the handlers (an unforeseen bug, a database outage, a streaming body that fails) ends
here instead of in uvicorn, which would cut the connection, dropping whatever request the client had sent next on
it:

- the database is unavailable (down, restarting, busy past the retries): 503 with ``Retry-After``, one log line;
- the collection was deleted while a write was on its way: 404;
- still running when the drain timeout after SIGTERM ran out (uvicorn cancels it): 503 with ``Retry-After``;
- anything else: 500 with the request_id, and the traceback in the log.

The response's start is held back until its first body chunk, so a streamed body that fails before producing
anything still becomes an enveloped error. Once body bytes are out the status cannot change any more: the failure
is logged and the connection closed, so the client sees a truncated answer as an error rather than as a complete
one. The access log and request metrics (:mod:`matchdb.web.observe`) wrap this middleware, so they see the final
status that it decides; it is the one owner of the request id, which they read from the request's state.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matchdb.storage.records import CollectionGone
from matchdb.storage.transactions import unavailable
from matchdb.web.envelope import RequestContext

log = logging.getLogger("matchdb")
_OWN_HEADERS = (b"x-request-id", b"x-content-type-options")  # set on every answer here (nosniff: no answer is
# ever read by a browser as another type than it says, e.g. a JSON echo of a caller's text as HTML or script)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


class Guard:
    def __init__(self, app: ASGIApp, proc_id: str) -> None:
        self.app = app
        self.proc_id = proc_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        context = RequestContext(self.proc_id, incoming_request_id(scope) or str(uuid.uuid4()))
        scope.setdefault("state", {})["request_id"] = context.request_id
        if "\x00" in scope.get("path", ""):  # no route or file has a NUL; file and database APIs refuse one
            await _answer(context, 404, "Unknown method or path", None, scope, receive, send)
            return
        held: Message | None = None
        body_started = False

        async def send_when_body(message: Message) -> None:
            nonlocal held, body_started
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWN_HEADERS]
                own = [(b"x-request-id", context.request_id.encode()), (b"x-content-type-options", b"nosniff")]
                held = {**message, "headers": [*headers, *own]}
                return
            if held is not None:
                start, held = held, None
                body_started = True
                await send(start)
            await send(message)

        try:
            await self.app(scope, receive, send_when_body)
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when the drain timeout after SIGTERM runs out (the only
            # time it cancels a request), and would answer a bare 500. The work was not done (or not acknowledged):
            # say so with a 503, so the caller retries on another replica, and let the task end normally.
            if body_started:
                log.warning("request_id %s: cut by the shutdown after it began", context.request_id, extra=_id(context))
                return
            text = "request_id %s: 503, still running when the drain timeout ran out"
            log.warning(text, context.request_id, extra=_id(context))
            await _answer(context, 503, "The server is shutting down; retry shortly", 1, scope, receive, send)
            return
        except Exception as exc:
            status, text, retry_after = self._classify(exc, context)
            if body_started:
                text = "response of request_id %s failed after it began: connection closed"
                log.error(text, context.request_id, extra=_id(context))
                return
            await _answer(context, status, text, retry_after, scope, receive, send)
            return
        if held is not None:  # a start without a body: pass it on and let the server judge
            await send(held)

    def _classify(self, exc: Exception, context: RequestContext) -> tuple[int, str, int | None]:
        """(status, text, Retry-After) of the answer to a request that raised ``exc``; logs it."""
        down = unavailable(exc)
        if down is not None:
            log.warning("request_id %s: 503, %s (%s)", context.request_id, down, _first_line(exc), extra=_id(context))
            return 503, str(down), down.retry_after
        if isinstance(exc, CollectionGone):
            return 404, "Unknown collection (it was deleted meanwhile)", None
        log.error("internal error (request_id %s)", context.request_id, exc_info=exc, extra=_id(context))
        return 500, f"Internal server error (request_id {context.request_id})", None


async def _answer(
    context: RequestContext, status: int, text: str, retry_after: int | None, scope: Scope, receive: Receive, send: Send
) -> None:
    """Send the guard's own enveloped error, with the headers every answer has."""
    response = context.respond({}, status, text)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    response.headers.update({"X-Request-ID": context.request_id, "X-Content-Type-Options": "nosniff"})
    await response(scope, receive, send)


def incoming_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID`` if it is an acceptable id (else None: the request gets a fresh one)."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def _id(context: RequestContext) -> dict[str, str]:
    """``extra`` of a log record: the request id as its own field (the JSON log format shows it)."""
    return {"request_id": context.request_id}


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0][:200]
