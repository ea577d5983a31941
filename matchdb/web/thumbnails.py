"""``/v2/thumbnail``: the stored thumbnail of one record, as image bytes (the web console shows them).

Authenticated like every method (``Authorization`` and ``collection-id`` headers), so a page cannot point an
``<img src>`` at it: the console fetches the bytes with its token and shows them through a blob URL.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from matchdb.storage.thumbnails import Lookup, get_thumbnail
from matchdb.web.auth import Principal
from matchdb.web.collections import collection_of
from matchdb.web.envelope import ApiError, RequestContext
from matchdb.web.stateless import api_method


@api_method
async def thumbnail(request: Request, context: RequestContext, principal: Principal, body: dict[str, Any]) -> Response:
    """GET ``?_id=...`` or POST ``{"_id": ...}``: the picture, 204 (no content) for a record stored without one,
    404 for no such record."""
    collection = await collection_of(request, principal)
    ext_id = body.get("_id") if request.method == "POST" else request.query_params.get("_id")
    if isinstance(ext_id, (int, float)) and not isinstance(ext_id, bool):
        ext_id = str(ext_id)
    if not isinstance(ext_id, str) or not ext_id:
        raise ApiError(400, "Field '_id' must be a non-empty string")

    def read() -> Lookup:
        with request.app.state.engine.connect() as connection:
            return get_thumbnail(connection, collection.id, ext_id)

    found = await run_in_threadpool(read)
    if not found.record_exists:
        raise ApiError(404, f"No record with _id {ext_id!r}")
    if found.data is None:  # stored with thumbnails off: nothing to show, and nothing wrong
        return Response(status_code=204)
    # no-store: the URL names only the _id (collection and token are headers), so a cached answer could be shown to
    # another token or collection in the same browser; the console keeps the pictures it shows itself
    return Response(found.data, media_type=found.media_type, headers={"Cache-Control": "no-store"})
