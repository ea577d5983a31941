"""Every API method, declared once: the app serves these routes under ``/v2`` (and Ximilar's ``/image_matching/v2``)
and the OpenAPI document (:mod:`matchdb.web.openapi`) describes exactly them."""

from __future__ import annotations

from starlette.routing import Route

from matchdb.web import browse, collections, schemas, stateless, thumbnails
from matchdb.web.openapi import ApiMethod, QueryParam

_IMAGE = {"_id": "a1", "_base64": schemas.EXAMPLE_PNG}
_QUERY = {"_base64": schemas.EXAMPLE_PNG}

API_METHODS: tuple[ApiMethod, ...] = (
    ApiMethod(
        "/ping", ("GET", "POST"), stateless.ping, "ping", "Service information, version and index state",
        None, schemas.PingResponse,
    ),
    ApiMethod(
        "/visual_hash", ("POST",), stateless.visual_hash, "visual_hash", "The visual hashes of the images sent",
        schemas.VisualHashRequest, schemas.RecordsResponse,
        description="Each record gains one field per hash type: `bmh1` (961 bits) and/or `phash` (64 bits), "
        "as strings of binary digits.",
        example={"records": [_IMAGE], "hash_type": "phash"},
    ),
    ApiMethod(
        "/remove_duplicates", ("POST",), stateless.remove_duplicates, "remove_duplicates",
        "Group the images sent into near-duplicates", schemas.RemoveDuplicatesRequest,
        schemas.RemoveDuplicatesResponse,
        description="Greedy in request order: a kept record lists the later ones within `range` in "
        "`removed_records`.",
        example={"records": [_IMAGE, {**_IMAGE, "_id": "a2"}], "range": 5},
    ),
    ApiMethod(
        "/rank_images", ("POST",), stateless.rank_images, "rank_images",
        "Rank the images sent by distance to a query image", schemas.RankImagesRequest, schemas.RankImagesResponse,
        example={"query_record": _QUERY, "records": [_IMAGE], "k": 5},
    ),
    ApiMethod(
        "/insert", ("POST",), collections.insert, "insert", "Store records (upsert by _id) with their hashes",
        schemas.InsertRequest, schemas.RecordsResponse, tag="records", collection=True, writes=True,
        example={"records": [{**_IMAGE, "color": "red"}]},
    ),
    ApiMethod(
        "/delete", ("POST",), collections.delete, "delete", "Delete records by _id", schemas.RefsRequest,
        schemas.RecordsResponse, tag="records", collection=True, writes=True, example={"records": [{"_id": "a1"}]},
    ),
    ApiMethod(
        "/update", ("POST",), collections.update, "update",
        "Merge attributes into stored records (null removes one)", schemas.UpdateRequest, schemas.RecordsResponse,
        tag="records", collection=True, writes=True, example={"records": [{"_id": "a1", "color": "blue"}]},
    ),
    ApiMethod(
        "/get", ("POST",), collections.get, "get", "Stored records by _id", schemas.GetRequest,
        schemas.RecordsResponse, tag="records", collection=True, example={"records": [{"_id": "a1"}]},
    ),
    ApiMethod(
        "/allIDs", ("POST",), collections.all_ids, "allIDs", "One page of the collection's _id values",
        schemas.AllIdsRequest, schemas.AllIdsResponse, tag="records", collection=True,
        example={"page": 1, "page_size": 100},
    ),
    ApiMethod(
        "/allRecords", ("POST",), browse.all_records, "allRecords",
        "Every matching record, or one page of them (streamed)", schemas.BrowseRequest, schemas.BrowseResponse,
        tag="records", collection=True,
        query=(
            QueryParam("size", {"type": "integer", "minimum": 0, "maximum": 10**17}, "Page size (0 or absent: all)"),
            QueryParam("page", {"type": "integer", "minimum": 1, "maximum": 10**17}, "1-based page (with size)"),
        ),
        example={"fields_to_return": ["color"], "filter": {"color": "red"}},
    ),
    ApiMethod(
        "/random", ("POST",), browse.random_records, "random", "Distinct matching records drawn at random",
        schemas.RandomRequest, schemas.BrowseResponse, tag="records", collection=True, example={"count": 5},
    ),
    ApiMethod(
        "/visualKNN", ("POST",), collections.visual_knn, "visualKNN",
        "The k nearest stored records to a query image or stored record", schemas.VisualKnnRequest,
        schemas.KnnResponse, tag="search", collection=True,
        description="`filter` applies before `k` and `radius`. Without `query_record`, `records` holds several "
        "queries, each answered in its own record.",
        example={"query_record": _QUERY, "k": 10},
    ),
    ApiMethod(
        "/visualRankRecords", ("POST",), collections.visual_rank_records, "visualRankRecords",
        "Rank the given stored records against a query", schemas.VisualRankRecordsRequest,
        schemas.RankRecordsResponse, tag="search", collection=True,
        example={"query_record": _QUERY, "records": [{"_id": "a1"}]},
    ),
    ApiMethod(
        "/thumbnail", ("GET", "POST"), thumbnails.thumbnail, "thumbnail",
        "The stored thumbnail of one record (JPEG, longest side 160 px)", schemas.ThumbnailRequest,
        schemas.Envelope, tag="records", collection=True, statuses=(204,), media="image/jpeg",
        query=(QueryParam("_id", {"type": "string", "minLength": 1}, "The record's _id (GET)"),),
        description="GET with `?_id=` or POST `{\"_id\": ...}`. 204 when the record was stored while thumbnails were "
        "off (`MATCHDB_THUMBNAILS=0`), 404 when there is no such record. The bytes are not in the envelope.",
        example={"_id": "a1"},
    ),
    ApiMethod(
        "/collections", ("GET",), collections.collections_endpoint, "listCollections",
        "The workspace's collections, with record counts and index states", None, schemas.CollectionsResponse,
        tag="collections",
    ),
    ApiMethod(
        "/collections", ("POST",), collections.collections_endpoint, "createCollection", "Create a collection",
        schemas.CreateCollectionRequest, schemas.CollectionResponse, tag="collections", writes=True,
        statuses=(409,), example={"name": "products"},
    ),
    ApiMethod(
        "/collections/{collection_id}", ("DELETE",), collections.collection_delete, "deleteCollection",
        "Delete a collection and its records (by id)", None, schemas.DeletedCollectionResponse,
        tag="collections", writes=True, statuses=(404,),
    ),
)  # fmt: skip


def api_routes() -> list[Route]:
    return [method.route() for method in API_METHODS]
