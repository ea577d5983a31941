"""What keeps a web page the local user visits from using an open service (no API token) on their behalf.

A page on another site can send a "simple" cross-site request without asking first (no CORS preflight): a POST
with a ``text/plain`` (or no) ``Content-Type``, and it cannot read the answer but the write is done. With tokens it
gets nowhere (it has no token to send, and the ``Authorization`` header would need a preflight that this server
never grants). While the service is open, every request other than a GET must therefore come from this server's
own origin (browsers send ``Origin`` on every such request) and a POST body must say ``application/json``, which
only a same-origin page (or a non-browser client) can send. DNS rebinding (a foreign name resolving to 127.0.0.1)
is stopped by the ``Host`` allow-list (``MATCHDB_ALLOWED_HOSTS``, Starlette's TrustedHostMiddleware).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from matchdb.web.envelope import ApiError, error_response, request_context


def refuse_cross_site(request: Request, body: dict[str, Any]) -> None:
    """403 for a request of an open service sent from another site's page, 415 for a POST body not declared JSON."""
    if request.method in ("GET", "HEAD"):
        return
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request.headers.get("host", "")):
        raise ApiError(403, "Refused: a request from another site's page (Origin is not this server)")
    if request.method == "POST" and body and not is_json_type(request.headers.get("content-type", "")):
        raise ApiError(415, "Send the body with 'Content-Type: application/json'")


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``Origin`` names the host (and port) the request was sent to (``null`` never does)."""
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()


class HostAllowList:
    """Starlette's TrustedHostMiddleware, its refusal written in the API's envelope (400, saying which setting lets
    the name in) instead of a plain-text line a client of the API cannot parse."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self._app = app
        self._check = TrustedHostMiddleware(self._allowed, allowed_hosts=allowed_hosts, www_redirect=False)

    async def _allowed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[_ALLOWED] = True
        await self._app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which this server has none of) as Starlette does
            await self._check(scope, receive, send)
            return
        refused = False

        async def answer(message: Message) -> None:
            nonlocal refused
            if scope.get(_ALLOWED):
                await send(message)
            elif not refused:  # the middleware's plain-text refusal: replaced by the envelope
                refused = True
                text = "Invalid Host header: this server answers only the names of MATCHDB_ALLOWED_HOSTS"
                await error_response(request_context(Request(scope)), 400, text)(scope, receive, send)

        await self._check(scope, receive, answer)


_ALLOWED = "matchdb.host_allowed"
