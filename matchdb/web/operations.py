"""The operator's routes, none of them part of the API (so none is in the OpenAPI document):

- ``GET /openapi.json``: the OpenAPI 3.1 document (:mod:`matchdb.web.openapi`), built on first use;
- ``GET /docs``: that document for people, rendered by Swagger UI from the swagger-ui-py package's own files
  (Apache-2.0, https://github.com/swagger-api/swagger-ui): no CDN, so it works offline;
- ``GET /metrics``: Prometheus metrics (:mod:`matchdb.metrics`), per ``MATCHDB_METRICS``: open, behind an API
  token, or off. The per-collection series (every workspace's collection ids and sizes) only for the operator's
  ``MATCHDB_METRICS_TOKEN``, or while the service is open (one workspace, no token at all): never for a tenant.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from matchdb.config import Settings
from matchdb.metrics import render
from matchdb.web.auth import Authenticator, is_metrics_operator
from matchdb.web.envelope import ApiError, request_context
from matchdb.web.observe import labelled
from matchdb.web.openapi import ApiMethod, document

# The Swagger UI files the page loads (the package has more: the editor, source maps).
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain",
}

# Relative URLs: the page also works behind a proxy that serves matchdb under a path prefix.
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>matchdb API</title>
<link rel="icon" type="image/png" href="docs/static/favicon-32x32.png">
<link rel="stylesheet" href="docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/static/swagger-ui-bundle.js"></script>
<script src="docs/static/swagger-ui-standalone-preset.js"></script>
<script>{script}</script>
</body>
</html>
"""
DOCS_SCRIPT = """
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
  layout: "BaseLayout"
});
"""
# Scripts: Swagger UI's own files and the one inline script above (by its hash); no page may frame /docs.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; "
        f"script-src 'self' 'sha256-{base64.b64encode(hashlib.sha256(DOCS_SCRIPT.encode()).digest()).decode()}'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def swagger_ui_dir() -> Path:
    return Path(str(importlib.resources.files("swagger_ui") / "static"))


def operation_routes(settings: Settings, methods: Sequence[ApiMethod]) -> list[BaseRoute]:
    built: dict[str, Any] = {}

    async def openapi(request: Request) -> Response:
        if "document" not in built:
            built["document"] = document(methods, settings)
        return JSONResponse(built["document"])

    async def docs(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE.replace("{script}", DOCS_SCRIPT), headers=DOCS_HEADERS)

    async def docs_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in SWAGGER_FILES:
            raise ApiError(404, "Unknown method or path")
        headers = {"Cache-Control": "public, max-age=86400"}
        return FileResponse(swagger_ui_dir() / name, media_type=SWAGGER_FILES[name], headers=headers)

    async def metrics(request: Request) -> Response:
        authorization = request.headers.get("authorization")
        authenticator: Authenticator = request.app.state.authenticator
        operator = is_metrics_operator(authorization, settings.metrics_token)
        if settings.metrics == "token" and not operator:
            try:
                await run_in_threadpool(authenticator.authenticate, authorization)
            except ApiError as exc:
                return request_context(request).respond({}, exc.status, exc.text)
        per_collection = operator or await run_in_threadpool(authenticator.open_mode)
        body, content_type = await run_in_threadpool(render, per_collection)
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    routes: list[BaseRoute] = [
        Route("/openapi.json", labelled(openapi, "openapi"), methods=["GET"], include_in_schema=False),
        Route("/docs", labelled(docs, "docs"), methods=["GET"], include_in_schema=False),
        Route("/docs/static/{name}", labelled(docs_file, "docs"), methods=["GET"], include_in_schema=False),
    ]
    if settings.metrics != "off":
        routes.append(Route("/metrics", labelled(metrics, "metrics"), methods=["GET"], include_in_schema=False))
    return routes
