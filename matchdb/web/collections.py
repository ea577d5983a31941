"""Handlers of the collection methods (API.md section 6): Ximilar's ``insert``, ``delete``, ``update``, ``get``,
``allIDs``, ``visualKNN``, ``visualRankRecords`` addressed by the ``collection-id`` header (the collection's id or
name), and collection management under ``/v2/collections``. ``allRecords`` and ``random`` are in
:mod:`matchdb.web.browse`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from matchdb.config import Settings
from matchdb.geometric import Query as GeometricQuery
from matchdb.hashing import VisualHash
from matchdb.service.answers import Answer, ChunkedAnswers
from matchdb.service.collections import CollectionService, Unconfirmed
from matchdb.service.filters import FilterLimits, QueryError, validate_filter
from matchdb.service.indexes import IndexLoading, IndexRegistry
from matchdb.service.records import LoadedRecord, RecordFailure, echo_record
from matchdb.service.views import CLIENT_ONLY, Fields, project, public_record
from matchdb.storage import collections as collection_store
from matchdb.storage.database import single_reads
from matchdb.storage.records import Presumed
from matchdb.storage.transactions import write_transaction
from matchdb.web.auth import Authenticator, Principal
from matchdb.web.envelope import ApiError, RequestContext, batch_outcome, stamp_statuses
from matchdb.web.requests import count_field, fields_field, flag_field, hash_types, number_field, records_field
from matchdb.web.stateless import api_method
from matchdb.web.streamjson import Items, Later, stream_json

MAX_KNOWN_COLLECTIONS = 10_000  # (workspace, collection-id header) lookups remembered per process
MAX_PAGE = 10**12  # allIDs: page * page_size stays a 64-bit SQL offset


def _service(request: Request) -> CollectionService:
    service: CollectionService = request.app.state.collections
    return service


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _require_write(principal: Principal) -> None:
    if principal.read_only:
        raise ApiError(403, "This token is read-only")


async def collection_of(
    request: Request, principal: Principal, presume: bool = False
) -> collection_store.CollectionInfo:
    """The collection named by the ``collection-id`` header (its id, or its name), in the caller's workspace
    (else 404). ``presume``: as this process last found it, if it did (the caller confirms it: visualKNN's fetch)."""
    key = request.headers.get("collection-id", "").strip()
    if not key:
        raise ApiError(400, "Missing header 'collection-id'")
    known: dict[tuple[str, str], collection_store.CollectionInfo] = request.app.state.collection_lookups
    remembered = known.get((principal.workspace, key)) if presume else None
    if remembered is not None:
        return remembered

    def find() -> collection_store.CollectionInfo | None:
        with single_reads(_engine(request)) as connection:
            return collection_store.find_collection(connection, principal.workspace, key, with_count=False)

    found = await run_in_threadpool(find)
    if found is None:
        known.pop((principal.workspace, key), None)
        raise ApiError(404, f"Unknown collection {key!r}")
    if len(known) >= MAX_KNOWN_COLLECTIONS:
        known.clear()
    known[(principal.workspace, key)] = found
    return found


def _ids(records: list[Any]) -> list[LoadedRecord]:
    """Records that only name an ``_id`` (delete, get, update): malformed ones fail on their own."""
    out = []
    for raw in records:
        record = dict(raw) if isinstance(raw, dict) else {}
        identifier = record.get("_id")
        if isinstance(identifier, (int, float)) and not isinstance(identifier, bool):
            record["_id"] = identifier = str(identifier)
        failure = None if isinstance(identifier, str) and identifier else RecordFailure(400, "record needs an _id")
        out.append(LoadedRecord(record, None, failure))
    return out


def _outcome(context: RequestContext, items: list[LoadedRecord], fields: Fields = None) -> JSONResponse:
    """``{"records": [...]}``, each with its ``_status`` and limited to ``fields``; the overall status."""
    stamp_statuses(context, items)
    code, text = batch_outcome(items)
    return context.respond({"records": [project(item.record, fields) for item in items]}, code, text)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _max_records(request: Request) -> int:
    return _settings(request).max_records


def _k(request: Request, body: dict[str, Any]) -> int | None:
    """The request's ``k``, at most ``MATCHDB_MAX_K``."""
    return count_field(body, "k", _settings(request).max_k, "MATCHDB_MAX_K")


@api_method
async def insert(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> JSONResponse:
    _require_write(principal)
    collection = await collection_of(request, principal)
    records = records_field(body, _max_records(request))
    fields = fields_field(body)
    loaded = await _service(request).insert(collection.id, records, geometric=collection.geometric)
    return _outcome(context, loaded, fields)


@api_method
async def delete(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> JSONResponse:
    _require_write(principal)
    collection = await collection_of(request, principal)
    items = _ids(records_field(body, _max_records(request)))
    wanted = [str(i.record["_id"]) for i in items if i.failure is None]
    found = await _service(request).delete(collection.id, wanted)
    items = [_found_or_404(item, str(item.record.get("_id")) in found) for item in items]
    return _outcome(context, items)


@api_method
async def update(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> JSONResponse:
    _require_write(principal)
    collection = await collection_of(request, principal)
    items = _ids(records_field(body, _max_records(request)))
    fields = fields_field(body)
    patches: dict[str, dict[str, Any]] = {}
    for index, item in enumerate(items):
        if item.failure is not None:
            continue
        if "_url" in item.record or "_base64" in item.record:
            reason = "update changes attributes only: to change the image, delete the record and insert it again"
            items[index] = LoadedRecord(item.record, None, RecordFailure(400, reason))
            continue
        patch = {k: v for k, v in item.record.items() if not k.startswith("_") and k not in CLIENT_ONLY}
        patches[str(item.record["_id"])] = patch
    merged = await _service(request).update(collection.id, patches)
    out = []
    for item in items:
        ext_id = item.record.get("_id")
        written = merged.get(str(ext_id)) if item.failure is None else None
        if isinstance(written, str):  # refused: the record is kept as it was
            out.append(LoadedRecord(item.record, None, RecordFailure(400, written)))
        elif written is not None:
            out.append(LoadedRecord(public_record(written), None))
        else:
            out.append(_found_or_404(item, False) if item.failure is None else item)
    return _outcome(context, out, fields)


@api_method
async def get(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> JSONResponse:
    collection = await collection_of(request, principal)
    items = _ids(records_field(body, _max_records(request)))
    fields = fields_field(body)
    wanted = [str(i.record["_id"]) for i in items if i.failure is None]
    stored = await _service(request).get(collection.id, wanted)
    out = []
    for item in items:
        found = stored.get(str(item.record.get("_id"))) if item.failure is None else None
        out.append(LoadedRecord(public_record(found), None) if found else _found_or_404(item, False))
    return _outcome(context, out, fields)


def _found_or_404(item: LoadedRecord, found: bool) -> LoadedRecord:
    if item.failure is not None or found:
        return item
    return LoadedRecord(item.record, None, RecordFailure(404, f"No record with _id {item.record.get('_id')!r}"))


@api_method
async def all_ids(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    collection = await collection_of(request, principal)
    page = count_field(body, "page") or 1
    page_size = count_field(body, "page_size", _settings(request).max_k, "MATCHDB_MAX_K") or 100
    if page > MAX_PAGE:
        raise ApiError(400, f"Field 'page' must be at most {MAX_PAGE}")
    ids, count = await _service(request).all_ids(collection.id, page, page_size)
    next_page = page + 1 if page * page_size < count else None
    return context.respond({"ids": ids, "next_page": next_page, "count": count})


Query = tuple[LoadedRecord, list[VisualHash], int | None]


def geometric_flag(body: dict[str, Any], collection: collection_store.CollectionInfo, dihedral: bool) -> bool:
    """The request's ``geometric`` flag, checked: only on a collection created with it, and not with dihedral."""
    geometric = flag_field(body, "geometric")
    if geometric and dihedral:
        raise ApiError(400, "dihedral and geometric cannot be combined: choose one")
    if geometric and not collection.geometric:
        raise ApiError(
            400,
            f"collection {collection.name!r} was not created with geometric: true, so its records keep no geometric "
            "signature (create a geometric collection and insert the images again)",
        )
    return geometric


def _search_values(item: LoadedRecord, values: list[VisualHash]) -> list[VisualHash] | GeometricQuery:
    """What a query searches with: its geometric query when loaded with ``geometric``, else its hashes."""
    return item.geometric.query if item.geometric is not None else values


async def _load_query(
    request: Request, collection_id: str, raw: object, kind: str, dihedral: bool, geometric: bool = False
) -> Query:
    """A query as (record to echo, hashes, row id to exclude): an image, or a stored record named by ``_id``. With
    ``dihedral`` the hashes are those of the image's 8 orientations, so it needs the image itself. A query that
    fails says why in its record's failure (and has no hashes)."""
    if isinstance(raw, dict) and "_url" not in raw and "_base64" not in raw and "_id" in raw:
        echo = echo_record(raw, assign_id=False)
        if dihedral or geometric:
            flag = "geometric" if geometric else "dihedral"
            text = f"{flag} needs the query image (_url or _base64): a stored record keeps only its hashes"
            return LoadedRecord(echo, None, RecordFailure(400, text)), [], None
        try:
            stored, value = await _service(request).stored_hash(collection_id, str(raw["_id"]), kind)
        except QueryError as exc:
            return LoadedRecord(echo, None, RecordFailure(exc.status, str(exc))), [], None
        return LoadedRecord(public_record(stored), None), [value], stored.row_id
    loader = request.app.state.loader
    item: LoadedRecord = await loader.load(raw, (kind,), assign_id=False, dihedral=dihedral, geometric=geometric)
    return item, ([] if item.image is None else item.query_hashes(kind)), None


async def _query_hashes(
    request: Request,
    context: RequestContext,
    collection_id: str,
    body: dict[str, Any],
    kind: str,
    dihedral: bool,
    geometric: bool = False,
) -> Query:
    """The request's ``query_record``; one that fails fails the request (400, or 404 for an unknown ``_id``)."""
    raw = body.get("query_record")
    if not isinstance(raw, dict):
        raise ApiError(400, "Missing field 'query_record' (an object with _url, _base64 or a stored _id)")
    item, values, exclude = await _load_query(request, collection_id, raw, kind, dihedral, geometric)
    stamp_statuses(context, [item])
    if item.failure is not None:
        if "_url" in raw or "_base64" in raw or "_id" not in raw:
            raise ApiError(400, f"Query record failed: {item.failure.text}")
        raise ApiError(item.failure.code, item.failure.text)
    return item, values, exclude


def checked_filter(request: Request, body: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``filter`` (equality and ``$in`` on attributes), checked against the server's limits."""
    settings = _settings(request)
    try:
        return validate_filter(body.get("filter"), FilterLimits(settings.max_filter_keys, settings.max_filter_values))
    except QueryError as exc:
        raise ApiError(exc.status, str(exc)) from exc


def _check_answer_size(request: Request, k: int, queries: int) -> None:
    """A batch answers up to ``k`` records per query: at most ``MATCHDB_MAX_ANSWER_RECORDS`` in all."""
    limit = _settings(request).max_answer_records
    if k * queries > limit:
        text = f"Too many answers: k {k} x {queries} queries = {k * queries} > limit {limit}"
        raise ApiError(400, f"{text} (MATCHDB_MAX_ANSWER_RECORDS)")


def _answer_fields(answer: Answer) -> dict[str, Any]:
    return {
        "answer_records": answer.records,
        "answer_distances": answer.distances,
        "answer_hamming": answer.hamming,
        "answer_count": len(answer.records),
    }


async def _visual_knn(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> Response:
    """One query (``query_record``) or, without one, several (``records``, as Ximilar's client's
    ``construct_data`` may send): then each comes back with its own answers and ``_status`` (a failed one without
    answers).

    A warm query is one statement: the token and the collection are taken as this process last found them, and the
    statement that fetches the answer's records confirms both. If it does not (revoked, deleted), or a stored query
    record is not found (it may be the collection that is gone), the request runs again with both looked up afresh,
    which gives the answer (or the 401, 404) that they call for now."""
    try:
        return await _knn_answer(request, context, principal, body, presume=True)
    except (Unconfirmed, ApiError, QueryError) as exc:
        # A 404 (a stored query record not found) may only be a collection deleted meanwhile, or no longer this
        # token's to read; other refusals do not depend on either and are answered as they are.
        if not isinstance(exc, Unconfirmed) and exc.status != 404:
            raise
        header = request.headers.get("authorization")
        authenticator: Authenticator = request.app.state.authenticator
        authenticator.forget(header)
        principal = await run_in_threadpool(authenticator.authenticate, header)
        request.state.workspace = principal.workspace
        return await _knn_answer(request, context, principal, body, presume=False)


async def _knn_answer(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any], presume: bool
) -> Response:
    collection = await collection_of(request, principal, presume)
    presumed = None
    if presume:
        authenticator: Authenticator = request.app.state.authenticator
        known = authenticator.presumed(request.headers.get("authorization"))
        if known is None:  # nothing to confirm about the token: look it up now, the usual way
            raise Unconfirmed("no token known")
        presumed = Presumed(known[1], collection.id)
    (kind,) = hash_types(body, ("bmh1",), allow_list=False)
    k = _k(request, body) or 10
    radius = number_field(body, "radius", None)
    dihedral = flag_field(body, "dihedral")
    geometric = geometric_flag(body, collection, dihedral)
    fields = fields_field(body)
    filter_ = checked_filter(request, body)
    batch = "query_record" not in body and "records" in body
    if batch:
        raws = records_field(body, _max_records(request))
        _check_answer_size(request, k, len(raws))
        queries = list(
            await asyncio.gather(*(_load_query(request, collection.id, r, kind, dihedral, geometric) for r in raws))
        )
    else:
        queries = [await _query_hashes(request, context, collection.id, body, kind, dihedral, geometric)]
    searches = [(_search_values(item, values), exclude) for item, values, exclude in queries if item.failure is None]
    try:
        answers = await _service(request).knn_many(collection.id, searches, k, radius, filter_, fields, presumed)
    except IndexLoading as exc:
        raise ApiError(503, str(exc)) from exc
    items = [item for item, _, _ in queries]
    if not answers.fits_one_chunk:
        return _streamed_knn(context, items, answers, batch)
    if not batch:
        return context.respond({**_answer_fields(answers.answer(0)), "query_records": [items[0].record]})
    position = 0
    for item in items:
        if item.failure is None:
            item.record.update(_answer_fields(answers.answer(position)))
            position += 1
    return _outcome(context, items)


visual_knn = api_method(_visual_knn, presume=True)


def _streamed_knn(context: RequestContext, items: list[LoadedRecord], answers: ChunkedAnswers, batch: bool) -> Response:
    """visualKNN's answer written while its records are read, a chunk at a time (answers past one chunk)."""
    queries = iter(range(len(answers)))

    def answer_fields() -> dict[str, Any]:
        query = next(queries)
        return {
            "answer_records": Items(answers.records(query)),
            "answer_distances": Later(lambda: answers.distances(query)),
            "answer_hamming": Later(lambda: answers.hamming(query)),
            "answer_count": Later(lambda: len(answers.hamming(query))),
        }

    if batch:
        stamp_statuses(context, items)
        code, text = batch_outcome(items)
        shown = []
        for item in items:
            status = item.record.pop("_status")
            extra = answer_fields() if item.failure is None else {}
            shown.append({**item.record, **extra, "_status": status})
        body: dict[str, Any] = {"records": shown}
    else:
        code, text = 200, "OK"
        body = {**answer_fields(), "query_records": [items[0].record]}
    body["status"] = context.status(code, text)
    body["statistics"] = Later(lambda: {"processing time": time.perf_counter() - context.started})
    return StreamingResponse(
        stream_json(body), status_code=200 if code in (200, 300) else code, media_type="application/json"
    )


@api_method
async def visual_rank_records(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    collection = await collection_of(request, principal)
    (kind,) = hash_types(body, ("bmh1",), allow_list=False)
    items = _ids(records_field(body, _max_records(request)))
    k = _k(request, body)
    radius = number_field(body, "radius", None)
    dihedral = flag_field(body, "dihedral")
    geometric = geometric_flag(body, collection, dihedral)
    fields = fields_field(body)
    query, values, _ = await _query_hashes(request, context, collection.id, body, kind, dihedral, geometric)
    wanted = [str(i.record["_id"]) for i in items if i.failure is None]
    ranked = _search_values(query, values)
    answer, missing = await _service(request).rank_records(collection.id, ranked, wanted, k, radius, fields)
    skipped = [_found_or_404(i, str(i.record.get("_id")) not in missing) for i in items]
    skipped = [i for i in skipped if i.failure is not None]
    stamp_statuses(context, skipped)
    code, text = (200, "OK") if not skipped else (300, "MIXED_RESULT")
    body_out = {
        **_answer_fields(answer),
        "query_records": [query.record],
        "skipped_records": [i.record for i in skipped],
    }
    return context.respond(body_out, code, text)


# Collection management -------------------------------------------------------------------------------------------


def _describe(request: Request, info: collection_store.CollectionInfo) -> dict[str, Any]:
    registry: IndexRegistry = request.app.state.registry
    state = registry.states().get(info.id)
    return {
        "id": info.id,
        "name": info.name,
        "workspace": info.workspace,
        "created_at": info.created_at.isoformat(),
        "record_count": info.record_count,
        "index": {"state": state.state if state else "not loaded", "size": state.size if state else 0},
        **({"geometric": True} if info.geometric else {}),
    }


@api_method
async def collections_endpoint(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    engine = _engine(request)
    if request.method == "GET":

        def listing() -> list[collection_store.CollectionInfo]:
            with engine.connect() as connection:
                return collection_store.list_collections(connection, principal.workspace)

        infos = await run_in_threadpool(listing)
        return context.respond({"collections": [_describe(request, info) for info in infos]})
    _require_write(principal)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ApiError(400, "Field 'name' must be a non-empty string of at most 200 characters")

    geometric = flag_field(body, "geometric")

    def create() -> collection_store.CollectionInfo:
        with write_transaction(engine) as connection:  # writers take turns: see storage.transactions
            return collection_store.create_collection(connection, principal.workspace, name.strip(), geometric)

    try:
        info = await run_in_threadpool(create)
    except collection_store.CollectionExists as exc:
        raise ApiError(409, str(exc)) from exc
    return context.respond(_describe(request, info))


@api_method
async def collection_delete(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    _require_write(principal)
    key = request.path_params["collection_id"]
    engine = _engine(request)

    def drop() -> bool:
        with write_transaction(engine) as connection:  # writers take turns: see storage.transactions
            found = collection_store.find_collection(connection, principal.workspace, key)
            return found is not None and found.id == key and collection_store.delete_collection(connection, key)

    if not await run_in_threadpool(drop):
        raise ApiError(404, f"Unknown collection {key!r}")
    registry: IndexRegistry = request.app.state.registry
    registry.forget(key)
    return context.respond({"id": key, "deleted": True})
