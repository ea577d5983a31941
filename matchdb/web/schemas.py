"""The shapes of the API's request bodies and answers, as pydantic models: the OpenAPI document's schemas.

They describe the contract (docs/api.md, API.md); they do not parse requests: the handlers check bodies themselves
(:mod:`matchdb.web.requests`) to give Ximilar's precise 400 texts. Every model allows properties it does not name,
as the API does (a record's own attributes are echoed and stored). Limits that an operator can change
(``MATCHDB_MAX_RECORDS``, ``MATCHDB_MAX_K``, ``MATCHDB_MAX_FILTER_KEYS``) are filled in by the document generator
from the running settings; the figures here are the defaults.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from matchdb.web.collections import MAX_PAGE

EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAH0lEQVR42mNkYGAQYOAgHrEwCHAwMJCARjWMahg6GgC3uAoWNmq+CwAAAABJRU5Er"
    "kJggg=="
)
HashType = Literal["bmh1", "phash"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


# --- records ------------------------------------------------------------------------------------------------------


class Record(_Open):
    """One image: ``_url`` (http/https) or ``_base64`` (plain or a data URI), an optional ``_id``, and any other
    attributes, which are echoed (and, by ``insert``, stored)."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, json_schema_extra={"examples": [{"_id": "a1", "_base64": EXAMPLE_PNG}]}
    )
    url: str | None = Field(None, alias="_url", description="http(s) URL of the image, downloaded by the server")
    base64: str | None = Field(None, alias="_base64", description="The image bytes in base64 (never echoed back)")
    id: str | int | None = Field(None, alias="_id", description="Echoed as a string; assigned (UUID4) when absent")


class RecordRef(_Open):
    """A stored record named by its ``_id`` (``get``, ``delete``, ``update`` with the attributes to merge)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, json_schema_extra={"examples": [{"_id": "a1"}]})
    id: str | int = Field(alias="_id")


class ThumbnailRequest(BaseModel):
    """The record whose stored thumbnail is wanted (the web console shows them)."""

    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [{"_id": "a1"}]})
    id: str | int = Field(alias="_id")


class QueryRecord(_Open):
    """The query: an image (``_url`` or ``_base64``) or, on collection methods, a stored record (``_id``)."""

    model_config = ConfigDict(
        extra="allow", populate_by_name=True, json_schema_extra={"examples": [{"_base64": EXAMPLE_PNG}]}
    )
    url: str | None = Field(None, alias="_url")
    base64: str | None = Field(None, alias="_base64")
    id: str | int | None = Field(None, alias="_id")


class RecordStatus(BaseModel):
    """Why one record succeeded or failed (``code`` 200, or 400/404 with a text)."""

    code: int
    text: str
    request_id: str


_ECHOED = "; a record that failed echoes what was sent"


class RecordOut(_Open):
    """A record of the request as answered: its attributes, ``_id``, the image's ``_width``/``_height`` and its
    ``_status`` (OK, or why it failed)."""

    id: Any = Field(None, alias="_id", description="A string" + _ECHOED)
    width: Any = Field(None, alias="_width", description="Pixels of the decoded image" + _ECHOED)
    height: Any = Field(None, alias="_height", description="Pixels of the decoded image" + _ECHOED)
    status: RecordStatus | None = Field(None, alias="_status")


class StoredRecordOut(_Open):
    """A stored record: ``_id``, its attributes, ``_url`` (when it was fetched from one), ``_width``, ``_height``
    (limited to ``fields_to_return``, ``_id`` always)."""

    id: str = Field(alias="_id")
    url: str | None = Field(None, alias="_url")
    width: int | None = Field(None, alias="_width")
    height: int | None = Field(None, alias="_height")


# --- the envelope -------------------------------------------------------------------------------------------------


class Status(BaseModel):
    """``code`` 200 OK, 300 MIXED_RESULT (some records failed; HTTP 200) or the HTTP error status."""

    code: int = Field(examples=[200])
    text: str = Field(examples=["OK"])
    request_id: str = Field(description="Also in the X-Request-ID header and the access log")
    proc_id: str = Field(description="The server process that answered")


class Statistics(BaseModel):
    processing_time: float = Field(alias="processing time", description="Seconds spent on the request")


class Envelope(_Open):
    """Every answer, errors included, carries ``status`` and ``statistics`` (Ximilar's envelope)."""

    status: Status
    statistics: Statistics


# --- request bodies -------------------------------------------------------------------------------------------------


class Records(_Open):
    records: list[Record] = Field(min_length=1, max_length=100, description="At most MATCHDB_MAX_RECORDS records")


class VisualHashRequest(Records):
    hash_type: HashType | list[HashType] | None = Field(None, description="Default: both")


class RemoveDuplicatesRequest(Records):
    hash_type: HashType | None = Field(None, description="Default: bmh1")
    range: float | None = Field(None, ge=0, le=100, description="Distance in percent of bits (default 0)")
    geometric: bool | None = Field(None, description="Match crops and small turns (matchdb extension, see docs/api.md)")


class RankImagesRequest(Records):
    query_record: QueryRecord
    hash_type: HashType | None = None
    k: int | None = Field(None, ge=1, le=1000, description="At most k answers (at most MATCHDB_MAX_K)")
    radius: float | None = Field(None, ge=0, le=100, description="Only answers within this distance (percent)")
    dihedral: bool | None = Field(None, description="Also match the query rotated and mirrored")
    geometric: bool | None = Field(None, description="Match crops and small turns (matchdb extension, see docs/api.md)")


class InsertRequest(_Open):
    records: list[Record] = Field(min_length=1, max_length=100)
    fields_to_return: list[str] | None = Field(None, description='Attributes to answer ("*": all)')


class RefsRequest(_Open):
    records: list[RecordRef] = Field(min_length=1, max_length=100)


class UpdateRequest(RefsRequest):
    fields_to_return: list[str] | None = None


class GetRequest(RefsRequest):
    fields_to_return: list[str] | None = None


class AllIdsRequest(_Open):
    page: int | None = Field(None, ge=1, le=MAX_PAGE, description="1-based (default 1)")
    page_size: int | None = Field(None, ge=1, le=1000, description="Default 100, at most MATCHDB_MAX_K")


class BrowseRequest(_Open):
    fields_to_return: list[str] | None = None
    filter: dict[str, Any] | None = Field(
        None,
        max_length=20,
        description='Equality on attributes, or {"attr": {"$in": [...]}}: at most MATCHDB_MAX_FILTER_KEYS attributes '
        "and MATCHDB_MAX_FILTER_VALUES values",
        examples=[{"color": "red"}],
    )


class RandomRequest(BrowseRequest):
    count: int | None = Field(None, ge=1, le=1000, description="Default 10, at most MATCHDB_MAX_K")


class VisualKnnRequest(BrowseRequest):
    query_record: QueryRecord | None = Field(None, description="The query (or several, as records)")
    records: list[QueryRecord] | None = Field(None, min_length=1, max_length=100)
    k: int | None = Field(None, ge=1, le=1000, description="Default 10, at most MATCHDB_MAX_K")
    radius: float | None = Field(None, ge=0, le=100)
    hash_type: HashType | None = None
    dihedral: bool | None = None
    geometric: bool | None = Field(None, description="Match crops and small turns (matchdb extension, see docs/api.md)")


class VisualRankRecordsRequest(_Open):
    query_record: QueryRecord
    records: list[RecordRef] = Field(min_length=1, max_length=100)
    k: int | None = Field(None, ge=1, le=1000, description="At most MATCHDB_MAX_K")
    radius: float | None = Field(None, ge=0, le=100)
    hash_type: HashType | None = None
    dihedral: bool | None = None
    geometric: bool | None = Field(None, description="Match crops and small turns (matchdb extension, see docs/api.md)")
    fields_to_return: list[str] | None = None


class CreateCollectionRequest(_Open):
    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"name": "products"}]})
    name: str = Field(min_length=1, max_length=200, pattern=r"\S")
    geometric: bool | None = Field(
        None, description="Records keep a geometric signature, so geometric queries work (matchdb extension)"
    )


# --- answers ----------------------------------------------------------------------------------------------------------


class ServiceInfo(_Open):
    name: str = Field(alias="_name")
    info: str = Field(alias="_info")


class IndexCounts(BaseModel):
    loading: int
    ready: int
    records: int


class Access(BaseModel):
    """What the caller's token may do (a matchdb extension: the web console hides write buttons from read-only
    tokens)."""

    workspace: str
    read_only: bool
    open: bool = Field(description="True when the server has no token yet (open mode, loopback only)")


class PingResponse(Envelope):
    service_info: ServiceInfo = Field(alias="_service_info")
    version: str
    indexes: IndexCounts
    access: Access


class RecordsResponse(Envelope):
    records: list[RecordOut]


class RemovedRecordOut(RecordOut):
    removed_records: list[RecordOut] | None = None


class RemoveDuplicatesResponse(Envelope):
    records: list[RemovedRecordOut]


class RankImagesResponse(Envelope):
    query_records: list[RecordOut]
    answer_records: list[RecordOut]
    answer_distances: list[float]
    answer_hamming: list[int]
    skipped_records: list[RecordOut]


class KnnResponse(Envelope):
    """One query: the answer fields; several (``records``): each record with its own answer fields."""

    query_records: list[RecordOut] | None = None
    answer_records: list[StoredRecordOut] | None = None
    answer_distances: list[float] | None = None
    answer_hamming: list[int] | None = None
    answer_count: int | None = None
    records: list[RecordOut] | None = None


class RankRecordsResponse(Envelope):
    query_records: list[RecordOut]
    answer_records: list[StoredRecordOut]
    answer_distances: list[float]
    answer_hamming: list[int]
    answer_count: int
    skipped_records: list[RecordOut]


class AllIdsResponse(Envelope):
    ids: list[str]
    next_page: int | None
    count: int


class BrowseResponse(Envelope):
    answer_records: list[StoredRecordOut]
    answer_count: int
    next: str | None = Field(None, description="URL of the next page (allRecords with size), while there is one")


class IndexState(BaseModel):
    state: str = Field(description="loading, ready, failed or not loaded")
    size: int


class Collection(_Open):
    id: str
    name: str
    workspace: str
    created_at: str
    record_count: int | None
    index: IndexState


class CollectionResponse(Envelope, Collection):
    pass


class CollectionsResponse(Envelope):
    collections: list[Collection]


class DeletedCollectionResponse(Envelope):
    id: str
    deleted: bool
