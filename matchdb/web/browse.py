"""Handlers of ``allRecords`` and ``random`` (API.md section 6), as Ximilar's Python client calls them.

``allRecords?size=N&page=P`` answers one page (1-based) with ``next``, the URL of the following page, while there
is one; without ``size`` (or with 0) it answers every matching record. Either way the answer is streamed: records
are fetched and written a chunk at a time, so ten million ``_id`` values never sit in memory as one answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from matchdb.service.browse import RecordBrowser
from matchdb.service.indexes import IndexLoading
from matchdb.service.rowids import Ids
from matchdb.service.views import Fields
from matchdb.web.auth import Principal
from matchdb.web.collections import checked_filter, collection_of
from matchdb.web.envelope import ApiError, RequestContext, encode_json
from matchdb.web.requests import count_field, fields_field, query_count
from matchdb.web.stateless import api_method

log = logging.getLogger("matchdb")


def _browser(request: Request) -> RecordBrowser:
    browser: RecordBrowser = request.app.state.browser
    return browser


@api_method
async def all_records(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> Response:
    collection = await collection_of(request, principal)
    size = query_count(request, "size", default=0, minimum=0)
    page = query_count(request, "page", default=1, minimum=1)
    fields = fields_field(body)
    filter_ = checked_filter(request, body)
    browser = _browser(request)
    try:
        ids = await run_in_threadpool(browser.matching, collection.id, filter_)
    except IndexLoading as exc:
        raise ApiError(503, str(exc)) from exc
    tail: dict[str, Any] = {"answer_count": len(ids)}
    if size:
        start = min((page - 1) * size, len(ids))  # (Python ints: no overflow for absurd pages)
        chosen = ids[start : start + size]
        if page * size < len(ids):
            tail["next"] = str(request.url.include_query_params(page=page + 1))
    else:
        chosen = ids
    stream = _stream(browser, chosen, fields, tail, context)
    return StreamingResponse(stream, media_type="application/json")


def _stream(
    browser: RecordBrowser, ids: Ids, fields: Fields, tail: dict[str, Any], context: RequestContext
) -> Iterator[bytes]:
    """The answer's JSON, a chunk of records at a time (runs in a worker thread: starlette iterates a plain
    iterator there). A failure after the first byte can only cut the answer short: it is logged."""
    yield b'{"answer_records":['
    separator = b""
    try:
        for records in browser.chunks(ids, fields):
            if records:
                yield separator + encode_json(records)[1:-1]  # the list's items, without its brackets
                separator = b","
    except Exception:
        log.exception("allRecords failed while streaming (request_id %s)", context.request_id)
        raise
    yield b"]," + encode_json(context.envelope(tail))[1:]


@api_method
async def random_records(
    request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]
) -> JSONResponse:
    collection = await collection_of(request, principal)
    count = count_field(body, "count", request.app.state.settings.max_k, "MATCHDB_MAX_K") or 10
    fields = fields_field(body)
    filter_ = checked_filter(request, body)
    try:
        records = await run_in_threadpool(_browser(request).sample, collection.id, count, filter_, fields)
    except IndexLoading as exc:
        raise ApiError(503, str(exc)) from exc
    return context.respond({"answer_records": records, "answer_count": len(records)})
