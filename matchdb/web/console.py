"""The web console: ``/`` and its static files (plain ES modules and CSS shipped in ``matchdb/console``).

The page is only a client of the public ``/v2`` API: it holds no server-side session and sees exactly what the
user's token allows. Its routes stay out of the API's schema (``include_in_schema=False``). A strict
Content-Security-Policy (own scripts only; images from the page, blob URLs or a record's own ``_url``) guards the
token the tab holds.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from matchdb.config import Settings
from matchdb.web.auth import Authenticator
from matchdb.web.envelope import ApiError

ASSETS = Path(__file__).resolve().parent.parent / "console"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}")
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data: https: http:; connect-src 'self'; object-src 'none'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> Response:
    if not _NAME.fullmatch(name):  # before any file system call: a NUL or an odd escape is a 404, not a 500
        raise ApiError(404, "Unknown method or path")
    path = (ASSETS / name).resolve()
    if path.parent != ASSETS or path.suffix not in _TYPES or not path.is_file():
        raise ApiError(404, "Unknown method or path")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


async def index(request: Request) -> Response:
    return _asset("index.html")


async def server(request: Request) -> Response:
    """What the page needs before sign-in: whether a token is needed at all (open mode), and the request limits. Asked
    here rather than by a token-less ``ping``, whose 401 would be a failed request in the browser's log."""
    authenticator: Authenticator = request.app.state.authenticator
    open_mode = await run_in_threadpool(authenticator.open_mode)
    settings: Settings = request.app.state.settings
    return JSONResponse({"open": open_mode, "max_records": settings.max_records}, headers=_HEADERS)


async def asset(request: Request) -> Response:
    return _asset(str(request.path_params["name"]))


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET"], include_in_schema=False),
        Route("/console/server.json", server, methods=["GET"], include_in_schema=False),
        Route("/console/{name}", asset, methods=["GET"], include_in_schema=False),
    ]
