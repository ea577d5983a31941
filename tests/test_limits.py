"""Every count a request can name has a cap (issue 25, part A), through the real app on SQLite and Postgres: the
answer above a cap is a 400 in the Ximilar envelope that names the limit and its setting, the answer at it a 200.
The same attacks on a real server, with its memory and /healthz watched, are in tests/test_hostile.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine
from matchdb.storage.records import NewRecord, upsert_records
from matchdb.web.app import create_app
from tests.imagegen import encode


def limited(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        hash_threads=1,
        max_k=5,
        max_answer_records=12,
        max_json_values=300,
        max_json_depth=6,
        max_filter_keys=3,
        max_filter_values=10,
    )


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(limited(database_url))) as client:
        yield client


@pytest.fixture
def collection(client: TestClient, database_url: str) -> str:
    """A collection of 20 records (``r0`` .. ``r19``, attribute ``i``), stored directly."""
    created = client.post("/v2/collections", json={"name": "limits"}).json()
    engine = make_engine(database_url)
    with engine.begin() as connection:
        batch = [NewRecord(f"r{i}", {"i": i}, None, 8, 8, "c", bytes([i]) + bytes(120), bytes(8)) for i in range(20)]
        upsert_records(connection, created["id"], batch)
    engine.dispose()
    return str(created["id"])


def post(client: TestClient, method: str, body: dict[str, Any] | bytes, collection: str = "") -> tuple[int, Any]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"collection-id": collection, "content-type": "application/json"}
    response = client.post(f"/v2/{method}", content=content, headers=headers)
    return response.status_code, response.json()


def refused(answer: tuple[int, Any], *fragments: str) -> None:
    status, body = answer
    assert status == 400 and body["status"]["code"] == 400, body
    assert all(fragment in body["status"]["text"] for fragment in fragments), body["status"]["text"]


def test_k_and_counts_are_capped(client: TestClient, collection: str) -> None:
    knn = {"query_record": {"_id": "r1"}, "fields_to_return": ["_id"]}
    refused(post(client, "visualKNN", {**knn, "k": 6}, collection), "'k'", "at most 5", "MATCHDB_MAX_K")
    refused(post(client, "visualKNN", {**knn, "k": 10**9}, collection), "MATCHDB_MAX_K")
    status, body = post(client, "visualKNN", {**knn, "k": 5}, collection)
    assert status == 200 and body["answer_count"] == 5
    ranked = {"query_record": {"_id": "r1"}, "records": [{"_id": "r2"}], "k": 6}
    refused(post(client, "visualRankRecords", ranked, collection), "MATCHDB_MAX_K")
    refused(post(client, "random", {"count": 6}, collection), "'count'", "MATCHDB_MAX_K")
    refused(post(client, "allIDs", {"page_size": 6}, collection), "'page_size'", "MATCHDB_MAX_K")
    status, body = post(client, "random", {"count": 5}, collection)
    assert status == 200 and body["answer_count"] == 5


def test_a_batch_answers_at_most_max_answer_records(client: TestClient, collection: str) -> None:
    batch = {"records": [{"_id": f"r{i}"} for i in range(3)], "k": 5, "fields_to_return": ["_id"]}
    refused(post(client, "visualKNN", batch, collection), "15 > limit 12", "MATCHDB_MAX_ANSWER_RECORDS")
    status, body = post(client, "visualKNN", {**batch, "k": 4}, collection)
    assert status == 200 and [len(r["answer_records"]) for r in body["records"]] == [4, 4, 4]


def test_filters_are_capped(client: TestClient, collection: str) -> None:
    knn = {"query_record": {"_id": "r1"}, "k": 5}
    keys = {"filter": {"a": 1, "b": 2, "c": 3, "d": 4}}
    refused(post(client, "visualKNN", {**knn, **keys}, collection), "4 attributes", "MATCHDB_MAX_FILTER_KEYS")
    values = {"filter": {"i": {"$in": list(range(8))}, "j": {"$in": [1, 2, 3]}}}
    refused(post(client, "allRecords", values, collection), "more than 10 values", "MATCHDB_MAX_FILTER_VALUES")
    refused(post(client, "random", {"filter": {"i": 10**400}}, collection), "finite numbers")
    refused(post(client, "random", {"filter": {"x" * 300: 1}}, collection), "256 characters")
    status, body = post(client, "allRecords", {"filter": {"i": {"$in": [*range(9), "3"]}}}, collection)
    assert status == 200 and sorted(r["i"] for r in body["answer_records"]) == list(range(9))


def test_bodies_past_their_shape_limits_are_refused(client: TestClient) -> None:
    flood = b'{"records": [' + b",".join([b"{}"] * 400) + b"]}"
    refused(post(client, "visual_hash", flood), "too complex", "more than 300 values", "MATCHDB_MAX_JSON_VALUES")
    deep = b'{"records": [{"x": ' + b"[" * 6 + b"]" * 6 + b"}]}"
    refused(post(client, "visual_hash", deep), "nested deeper than 6", "MATCHDB_MAX_JSON_DEPTH")
    in_flood = b'{"filter": {"i": {"$in": [' + b",".join([b"1"] * 400) + b"]}}}"
    refused(post(client, "random", in_flood), "MATCHDB_MAX_JSON_VALUES")
    within = b'{"records": [' + b",".join([b"{}"] * 120) + b"]}"  # 241 values: 120 records, 120 empty objects
    refused(post(client, "visual_hash", within), "Too many records: 120 > limit 100")  # parsed, then checked


def test_a_chunked_body_past_a_limit_is_read_to_the_end_and_refused(client: TestClient) -> None:
    """No Content-Length: the shape is counted as the chunks arrive; the rest is read and dropped, not kept."""

    def chunks() -> Iterator[bytes]:
        yield b'{"records": ['
        for _ in range(100):
            yield b"{}," * 50
        yield b"{}]}"

    response = client.post("/v2/visual_hash", content=chunks(), headers={"content-type": "application/json"})
    refused((response.status_code, response.json()), "MATCHDB_MAX_JSON_VALUES")


def test_a_large_body_is_parsed_off_the_event_loop_and_answered(client: TestClient) -> None:
    """Past 64 KiB the parse runs in a worker thread: the answer is the same."""
    image = base64.b64encode(encode(Image.new("RGB", (4, 4), (10, 200, 30)), "PNG")).decode()
    body = {"records": [{"_base64": image, "padding": "x" * 100_000}]}
    status, answer = post(client, "visual_hash", body)
    assert status == 200 and answer["records"][0]["padding"] == "x" * 100_000


def test_the_document_shows_the_servers_limits(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["VisualKnnRequest"]["properties"]["k"]["anyOf"][0]["maximum"] == 5
    assert schemas["RandomRequest"]["properties"]["count"]["anyOf"][0]["maximum"] == 5
    assert schemas["AllIdsRequest"]["properties"]["page_size"]["anyOf"][0]["maximum"] == 5
    assert schemas["BrowseRequest"]["properties"]["filter"]["anyOf"][0]["maxProperties"] == 3
