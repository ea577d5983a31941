"""Handlers of Ximilar's stateless methods: ping, visual_hash, remove_duplicates, rank_images (API.md section 5)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from matchdb import __version__
from matchdb.config import Settings
from matchdb.hashing import HASH_TYPES
from matchdb.service import geometric as geometric_service
from matchdb.service import stateless as service
from matchdb.service.filters import QueryError
from matchdb.service.records import ImageLoader
from matchdb.storage.collections import list_collections
from matchdb.storage.transactions import unavailable
from matchdb.web.auth import Authenticator, Principal
from matchdb.web.bodies import BodyReader
from matchdb.web.browser import refuse_cross_site
from matchdb.web.envelope import ApiError, RequestContext, batch_outcome, request_context, stamp_statuses
from matchdb.web.requests import count_field, flag_field, hash_types, number_field, records_field

SERVICE_INFO = {
    "_name": "Image matching service",
    "_info": "Get visual hashes, find (near-)duplicate images and rank them",
}

Handler = Callable[[Request, RequestContext, Principal, dict[str, Any]], Awaitable[Response]]


def api_method(handler: Handler, presume: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a method: request context, authentication, JSON body; ApiError and QueryError become the enveloped
    error. ``presume``: a caller this process has accepted before is taken as it was then, without asking the
    database; the handler must confirm it (visualKNN does, in the statement that fetches its answer)."""

    async def endpoint(request: Request) -> Response:
        context = request_context(request)
        try:
            authenticator: Authenticator = request.app.state.authenticator
            header = request.headers.get("authorization")
            known = authenticator.presumed(header) if presume else None
            if known is not None:
                principal = known[0]
            else:
                principal = await run_in_threadpool(authenticator.authenticate, header)
            request.state.workspace = principal.workspace
            bodies: BodyReader = request.app.state.bodies
            body = await bodies.read(request) if request.method == "POST" else {}
            if principal.token_id is None:  # open: no token stops another site's page (see web/browser.py)
                refuse_cross_site(request, body)
            records = body.get("records")
            request.state.records = len(records) if isinstance(records, list) else None
            return await handler(request, context, principal, body)
        except ApiError as exc:
            return context.respond({}, exc.status, exc.text)
        except QueryError as exc:  # a filter the database refused, found only when the query runs
            return context.respond({}, exc.status, str(exc))

    return endpoint


def _loader(request: Request) -> ImageLoader:
    loader: ImageLoader = request.app.state.loader
    return loader


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _max_records(request: Request) -> int:
    return _settings(request).max_records


def _own_collections(request: Request, workspace: str) -> set[str]:
    """The ids of ``workspace``'s collections; during a database outage, those it had when last asked (so that ping
    keeps answering, as it promises, without counting any other workspace's)."""
    known: dict[str, set[str]] = request.app.state.known_collections
    try:
        with request.app.state.engine.connect() as connection:
            ids = {info.id for info in list_collections(connection, workspace, with_count=False)}
    except (DBAPIError, SATimeoutError) as exc:
        if unavailable(exc) is None:
            raise
        return known.get(workspace, set())
    known[workspace] = ids
    return ids


@api_method
async def ping(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> JSONResponse:
    """Service information and the state of the caller's own collections' indexes (never another workspace's)."""
    own = await run_in_threadpool(_own_collections, request, principal.workspace)
    states = [state for key, state in request.app.state.registry.states().items() if key in own]
    indexes = {
        "loading": sum(state.state == "loading" for state in states),
        "ready": sum(state.state == "ready" for state in states),
        "records": sum(state.size for state in states),
    }
    # Who the caller is, so a client (the web console) can tell open mode and a read-only token without trying a write.
    access = {"workspace": principal.workspace, "read_only": principal.read_only, "open": principal.token_id is None}
    return context.respond(
        {"_service_info": dict(SERVICE_INFO), "version": __version__, "indexes": indexes, "access": access}
    )


@api_method
async def visual_hash(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    records = records_field(body, _max_records(request))
    kinds = hash_types(body, HASH_TYPES, allow_list=True)
    loaded = await _loader(request).load_many(records, kinds, assign_id=True)
    stamp_statuses(context, loaded)
    code, text = batch_outcome(loaded)
    return context.respond({"records": service.visual_hash(loaded, kinds)}, code, text)


@api_method
async def remove_duplicates(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    records = records_field(body, _max_records(request))
    (kind,) = hash_types(body, ("bmh1",), allow_list=False)
    limit = number_field(body, "range", 0.0)
    assert limit is not None
    geometric = flag_field(body, "geometric")
    loaded = await _loader(request).load_many(records, (kind,), assign_id=True, geometric=geometric)
    stamp_statuses(context, loaded)
    code, text = batch_outcome(loaded)
    if geometric:
        return context.respond({"records": geometric_service.remove_duplicates(loaded, limit)}, code, text)
    return context.respond({"records": service.remove_duplicates(loaded, kind, limit)}, code, text)


@api_method
async def rank_images(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    if not isinstance(body.get("query_record"), dict):
        raise ApiError(400, "Missing field 'query_record' (an object with _url or _base64)")
    records = records_field(body, _max_records(request))
    (kind,) = hash_types(body, ("bmh1",), allow_list=False)
    k = count_field(body, "k", _settings(request).max_k, "MATCHDB_MAX_K")
    radius = number_field(body, "radius", None)
    dihedral = flag_field(body, "dihedral")
    geometric = flag_field(body, "geometric")
    if dihedral and geometric:
        raise ApiError(400, "dihedral and geometric cannot be combined: choose one")
    loader = _loader(request)
    query = await loader.load(body["query_record"], (kind,), assign_id=False, dihedral=dihedral, geometric=geometric)
    loaded = await loader.load_many(records, (kind,), assign_id=True, geometric=geometric)
    stamp_statuses(context, [query, *loaded])
    if query.image is None:
        assert query.failure is not None
        return context.respond({"query_records": [query.record]}, 400, f"Query record failed: {query.failure.text}")
    if geometric:
        ranking = geometric_service.rank(query, loaded, k, radius)
    else:
        ranking = service.rank(query.query_hashes(kind), loaded, k, radius)
    skipped = [item.record for item in loaded if item.failure is not None]
    code, text = batch_outcome(loaded)
    response = {
        "query_records": [query.record],
        "answer_records": ranking.answer_records,
        "answer_distances": ranking.answer_distances,
        "answer_hamming": ranking.answer_hamming,
        "skipped_records": skipped,
    }
    return context.respond(response, code, text)
