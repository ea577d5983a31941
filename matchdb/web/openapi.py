"""The OpenAPI 3.1 document of the API, generated from the routes' own declarations (:class:`ApiMethod`).

Each API route is declared once (:mod:`matchdb.web.methods`): the app builds its route from the declaration and
this module its operation, so the document cannot drift from what is served. Request and answer shapes are the
pydantic models of :mod:`matchdb.web.schemas`; their JSON Schema (2020-12, which OpenAPI 3.1 uses as is) goes to
``components.schemas``. The same routes are also served under ``/image_matching/v2`` (Ximilar's own path): they
are documented once, under ``/v2``, and the document's description says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.routing import Route

from matchdb import __version__
from matchdb.config import Settings
from matchdb.web.observe import Endpoint, labelled
from matchdb.web.schemas import Envelope

PREFIX = "/v2"
ALIASES = ("/image_matching/v2",)  # mounts of the same routes, documented by PREFIX

STATUSES = {
    200: "OK (envelope `status.code` 200), or MIXED_RESULT (`status.code` 300: some records failed, each says why "
    "in its `_status`)",
    400: "The request is invalid (not JSON, a missing or malformed field, too many records), every record failed, "
    "or the query record failed",
    401: "No API token, or an unknown or revoked one (the API is open while the database holds no token)",
    403: "A read-only token on a method that writes, or, while the API is open (no token), a request from another "
    "site's page (its `Origin` is not this server)",
    404: "Unknown collection (or another workspace's)",
    204: "The record exists but has nothing to return (a thumbnail: stored while thumbnails were off)",
    409: "A collection with this name exists in the workspace",
    413: "Request body larger than MATCHDB_MAX_BODY_BYTES",
    415: "While the API is open (no token): a body not sent as `Content-Type: application/json`",
    500: "A bug: the answer's request_id is in the server's error log with the traceback",
    503: "The database is unavailable, or the collection's index is still loading: retry after `Retry-After` s",
}


@dataclass(frozen=True)
class QueryParam:
    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class ApiMethod:
    """One API route: where it is, what serves it, and what it takes and answers (its OpenAPI operation)."""

    path: str  # under /v2
    verbs: tuple[str, ...]
    endpoint: Endpoint
    name: str  # the operationId, and the method label of the metrics and the access log
    summary: str
    body: type[BaseModel] | None
    answer: type[BaseModel]
    tag: str = "stateless"
    collection: bool = False  # addressed by the collection-id header
    writes: bool = False  # refused (403) to read-only tokens
    statuses: tuple[int, ...] = ()  # beyond those every method may answer
    query: tuple[QueryParam, ...] = ()
    description: str = ""
    example: dict[str, Any] | None = None  # a request body that works (the docs page and the fuzzer start there)
    media: str = ""  # the media type of a 200 answer that is not the JSON envelope (the bytes of a thumbnail)

    def route(self) -> Route:
        """The Starlette route; it labels each request with the method's name (for the access log and metrics)."""
        return Route(self.path, labelled(self.endpoint, self.name), methods=list(self.verbs), name=self.name)


def document(methods: Sequence[ApiMethod], settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``methods`` (under :data:`PREFIX`), with the limits of ``settings``."""
    models = {Envelope} | {m.answer for m in methods} | {m.body for m in methods if m.body is not None}
    _, top = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = top.get("$defs", {})
    for schema in schemas.values():
        _apply_limits(schema, settings)
    paths: dict[str, dict[str, Any]] = {}
    for method in methods:
        for verb in method.verbs:
            unique = method.name if len(method.verbs) == 1 else f"{method.name}_{verb.lower()}"
            paths.setdefault(PREFIX + method.path, {})[verb.lower()] = _operation(method, verb, unique)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "matchdb",
            "version": __version__,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "description": (
                "Near-duplicate image search with the Ximilar Image Matching v2 API. Every method below is also "
                "served under `/image_matching/v2/` (Ximilar's own path), identically; it is documented once, "
                "under `/v2/`. Every answer carries the Ximilar envelope (`status`, `statistics`) and the header "
                "`X-Request-ID` (the caller's, if it sent a valid one). Limits shown are this server's settings."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"token": []}, {}],
        "tags": [
            {"name": "stateless", "description": "Hash, rank and deduplicate the images sent, nothing stored"},
            {"name": "records", "description": "A collection's records, addressed by the collection-id header"},
            {"name": "search", "description": "Search a collection by image or by stored record"},
            {"name": "collections", "description": "Create, list and delete collections"},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Token <token>` (or `JWT <token>`, as Ximilar's client sends); see "
                    "`matchdb token create`. Not needed while the server has no token (open mode).",
                }
            },
            "parameters": {
                "CollectionId": {
                    "name": "collection-id",
                    "in": "header",
                    "required": True,
                    "description": "The collection's id, or its name",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                },
                "RequestId": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "Your id for this request (1-128 of `A-Za-z0-9._:/+=@-`), echoed in the answer "
                    "and logged; any other value is replaced by a fresh UUID",
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "RequestId": {"description": "The request's id, as in the envelope", "schema": {"type": "string"}}
            },
        },
    }


def _operation(method: ApiMethod, verb: str, operation_id: str) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"$ref": "#/components/parameters/RequestId"}]
    if method.collection:
        parameters.append({"$ref": "#/components/parameters/CollectionId"})
    if "{collection_id}" in method.path:
        parameters.append(
            {"name": "collection_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        )
    parameters += [
        {"name": q.name, "in": "query", "required": False, "schema": q.schema, "description": q.description}
        for q in method.query
    ]
    codes = [200, 400, 401, *((403,) if method.writes or verb != "GET" else ()), *((404,) if method.collection else ())]
    codes += [*method.statuses, *((413, 415) if verb == "POST" else ()), 500, 503]
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": method.summary,
        "tags": [method.tag],
        "parameters": parameters,
        "responses": {str(code): _response(code, method) for code in sorted(set(codes))},
    }
    if method.description:
        operation["description"] = method.description
    if verb == "POST" and method.body is not None:
        content: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{method.body.__name__}"}}
        if method.example is not None:
            content["example"] = method.example
        operation["requestBody"] = {"required": True, "content": {"application/json": content}}
    return operation


def _response(code: int, method: ApiMethod) -> dict[str, Any]:
    if code == 204:
        return {"description": STATUSES[code], "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}}
    if code == 200 and method.media:
        return {
            "description": "The image bytes",
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
            "content": {method.media: {"schema": {"type": "string", "contentMediaType": method.media}}},
        }
    model = method.answer if code == 200 else Envelope
    return {
        "description": STATUSES[code],
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }


def _apply_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Put the server's own limits in the schemas: ``records`` (``MATCHDB_MAX_RECORDS``), ``k``, ``count`` and
    ``page_size`` (``MATCHDB_MAX_K``), ``filter``'s attributes (``MATCHDB_MAX_FILTER_KEYS``)."""
    limits = {
        "records": ("maxItems", settings.max_records),
        "k": ("maximum", settings.max_k),
        "count": ("maximum", settings.max_k),
        "page_size": ("maximum", settings.max_k),
        "filter": ("maxProperties", settings.max_filter_keys),
    }
    for name, (keyword, value) in limits.items():
        field = schema.get("properties", {}).get(name)
        for variant in [field, *field.get("anyOf", [])] if field is not None else []:
            if keyword in variant:
                variant[keyword] = value
