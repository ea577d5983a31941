"""allRecords, random, fields_to_return, client-only keys, batch visualKNN, Ximilar's path and collection names
(issue 13), on SQLite and Postgres through the real ASGI app; random's uniformity through the real storage."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.service.browse import RecordBrowser
from matchdb.service.indexes import IndexRegistry
from matchdb.service.rowids import RowIds
from matchdb.storage.collections import create_collection
from matchdb.storage.records import NewRecord, delete_records, upsert_records
from matchdb.web.app import create_app
from tests.test_collections_api import Api, image_b64
from tests.test_index_registry import random_bmh1


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, hash_threads=2))) as client:
        yield client


def shop(client: TestClient, count: int = 23, name: str = "shop") -> Api:
    """A collection of ``count`` records s0, s1, ... with a category a/b/c by i % 3; s4 and s9 then deleted (when
    there are 10 or more)."""
    api = Api(client)
    api.create(name)
    for start in range(0, count, 10):
        records = [
            {"_id": f"s{i}", "_base64": image_b64(i % 7, (40, 32)), "cat": "abc"[i % 3], "i": i}
            for i in range(start, min(count, start + 10))
        ]
        assert api.call("insert", {"records": records})["status"]["code"] == 200
    if count > 9:
        api.call("delete", {"records": [{"_id": "s4"}, {"_id": "s9"}]})
    return api


def live(count: int = 23) -> list[str]:
    return [f"s{i}" for i in range(count) if i not in (4, 9)]


def all_records(api: Api, query: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = api.client.post(f"/v2/allRecords{query}", json=body, headers={"collection-id": api.collection})
    assert response.status_code == status, response.text
    payload: dict[str, Any] = response.json()
    return payload


def test_all_records_pages_in_insertion_order_with_next(client: TestClient) -> None:
    api = shop(client)
    seen: list[str] = []
    page = 1
    while True:
        answer = all_records(api, f"?size=5&page={page}", {"fields_to_return": ["_id"]})
        assert answer["answer_count"] == 21 and answer["status"]["code"] == 200
        assert all(set(record) == {"_id"} for record in answer["answer_records"])
        seen += [record["_id"] for record in answer["answer_records"]]
        if "next" not in answer:
            break
        page += 1
        assert answer["next"] == f"http://testserver/v2/allRecords?size=5&page={page}"
    assert page == 5 and seen == live()
    beyond = all_records(api, "?size=5&page=6", {})
    assert beyond["answer_records"] == [] and "next" not in beyond and beyond["answer_count"] == 21
    # no size (or 0): every record, streamed; the default shows every stored key
    for query in ("", "?size=0", "?page=3"):
        whole = all_records(api, query, {})
        assert [record["_id"] for record in whole["answer_records"]] == live() and "next" not in whole
        assert whole["answer_records"][0] == {"_id": "s0", "cat": "a", "i": 0, "_width": 40, "_height": 32}


def test_all_records_filter_fields_and_errors(client: TestClient) -> None:
    api = shop(client)
    filtered = all_records(api, "?size=3&page=2", {"filter": {"cat": "b"}, "fields_to_return": ["i"]})
    matching = [f"s{i}" for i in range(23) if i % 3 == 1 and i not in (4, 9)]
    assert filtered["answer_count"] == len(matching) == 7
    assert [r["_id"] for r in filtered["answer_records"]] == matching[3:6] and filtered["next"].endswith("page=3")
    last = all_records(api, "?size=3&page=3", {"filter": {"cat": "b"}})
    assert [r["_id"] for r in last["answer_records"]] == matching[6:] and "next" not in last
    assert all(set(r) == {"_id", "i"} for r in filtered["answer_records"])
    everything = all_records(api, "", {"filter": {"i": {"$in": [1, 2, "3"]}}, "fields_to_return": ["*"]})
    assert [r["_id"] for r in everything["answer_records"]] == ["s1", "s2"] and everything["answer_count"] == 2
    assert set(everything["answer_records"][0]) == {"_id", "cat", "i", "_width", "_height"}
    bad: list[tuple[str, dict[str, Any]]] = [
        ("?size=-1", {}),
        ("?size=x", {}),
        ("?page=0", {}),
        ("", {"fields_to_return": "_id"}),
        ("", {"fields_to_return": [1]}),
        ("", {"filter": {"cat": {"$gt": 1}}}),
    ]
    for query, body in bad:
        assert all_records(api, query, body, status=400)["status"]["code"] == 400


def test_random_draws_distinct_matching_records(client: TestClient) -> None:
    api = shop(client)
    for _ in range(5):
        answer = api.call("random", {"count": 5, "filter": {"cat": "c"}, "fields_to_return": ["_id", "cat"]})
        ids = [r["_id"] for r in answer["answer_records"]]
        assert len(ids) == len(set(ids)) == 5 and answer["answer_count"] == 5
        assert all(r == {"_id": r["_id"], "cat": "c"} for r in answer["answer_records"])
    few = api.call("random", {"count": 50, "filter": {"cat": "b"}})
    assert sorted(r["_id"] for r in few["answer_records"]) == sorted(f"s{i}" for i in (1, 7, 10, 13, 16, 19, 22))
    assert sorted(r["_id"] for r in api.call("random", {"count": 1000})["answer_records"]) == sorted(live())
    assert len(api.call("random", {})["answer_records"]) == 10  # the client's default count
    assert api.call("random", {"count": 1001}, status=400)["status"]["code"] == 400
    assert api.call("random", {"count": 0}, status=400)["status"]["code"] == 400


def test_fields_to_return_on_every_method(client: TestClient) -> None:
    api = shop(client, 6)
    got = api.call("get", {"records": [{"_id": "s1"}, {"_id": "nope"}], "fields_to_return": ["_id", "cat"]})
    assert set(got["records"][0]) == {"_id", "cat", "_status"}
    assert got["records"][1]["_status"]["code"] == 404
    assert set(api.call("get", {"records": [{"_id": "s1"}]})["records"][0]) == {
        "_id", "cat", "i", "_width", "_height", "_status"
    }  # fmt: skip
    assert set(api.call("get", {"records": [{"_id": "s1"}], "fields_to_return": ["*"]})["records"][0]) == {
        "_id", "cat", "i", "_width", "_height", "_status"
    }  # fmt: skip
    updated = api.call("update", {"records": [{"_id": "s2", "colour": "red"}], "fields_to_return": ["*"]})
    assert updated["records"][0] == {**updated["records"][0], "cat": "c", "i": 2, "colour": "red", "_width": 40}
    only_id = api.call("update", {"records": [{"_id": "s2", "n": 1}], "fields_to_return": ["_id"]})
    assert set(only_id["records"][0]) == {"_id", "_status"}
    inserted = api.call(
        "insert", {"records": [{"_id": "t", "_base64": image_b64(3), "x": 1, "y": 2}], "fields_to_return": ["x"]}
    )
    assert set(inserted["records"][0]) == {"_id", "x", "_status"}
    knn = api.call("visualKNN", {"query_record": {"_id": "s1"}, "k": 3, "fields_to_return": ["_id"]})
    assert len(knn["answer_records"]) == 3 and all(set(r) == {"_id"} for r in knn["answer_records"])
    ranked = api.call(
        "visualRankRecords",
        {"query_record": {"_id": "s1"}, "records": [{"_id": "s2"}, {"_id": "s3"}], "fields_to_return": ["i"]},
    )
    assert all(set(r) == {"_id", "i"} for r in ranked["answer_records"])


def test_client_only_keys_are_never_stored(client: TestClient) -> None:
    api = Api(client)
    api.create("keys")
    client_keys = {"_file": "/home/me/a.jpg", "noresize": True, "_color_space": "RGB", "color_space": "BGR"}
    inserted = api.call(
        "insert",
        {
            "records": [
                {"_id": "a", "_base64": image_b64(1), "price": 3, **client_keys},
                {"_id": "b", "_file": "/home/me/b.jpg"},
            ]
        },
    )
    assert [r["_status"]["code"] for r in inserted["records"]] == [200, 400]
    assert "send the image bytes as _base64" in inserted["records"][1]["_status"]["text"]
    api.call("update", {"records": [{"_id": "a", "noresize": False, "color_space": "HSV", "size": 41}]})
    stored = api.call("get", {"records": [{"_id": "a"}]})["records"][0]
    assert stored == {"_id": "a", "price": 3, "size": 41, "_width": 96, "_height": 64, "_status": stored["_status"]}
    listed = all_records(api, "", {})["answer_records"]
    assert listed == [{"_id": "a", "price": 3, "size": 41, "_width": 96, "_height": 64}]


def test_visual_knn_batch_answers_each_query(client: TestClient) -> None:
    api = shop(client, 8)
    answer = api.call(
        "visualKNN",
        {
            "records": [
                {"_base64": image_b64(5, (40, 32)), "mine": 1},
                {"_id": "s3"},
                {"_id": "missing"},
                {"_base64": "bm90IGFuIGltYWdl"},
            ],
            "k": 2,
            "filter": {"cat": {"$in": ["a", "c"]}},
            "fields_to_return": ["cat"],
        },
    )
    assert answer["status"]["code"] == 300
    first, stored, missing, broken = answer["records"]
    assert [r["_status"]["code"] for r in answer["records"]] == [200, 200, 404, 400]
    assert first["mine"] == 1 and first["answer_records"][0] == {"_id": "s5", "cat": "c"}
    assert first["answer_distances"][0] == 0.0 and first["answer_count"] == 2
    assert "s3" not in [r["_id"] for r in stored["answer_records"]]
    assert all(r["cat"] in "ac" for r in stored["answer_records"]) and len(stored["answer_records"]) == 2
    assert "answer_records" not in missing and "answer_records" not in broken
    single = api.call("visualKNN", {"query_record": {"_id": "s3"}, "k": 2, "filter": {"cat": {"$in": ["a", "c"]}}})
    assert all(set(r) == {"_id", "cat", "i", "_width", "_height"} for r in single["answer_records"])  # default: all
    assert [r["_id"] for r in single["answer_records"]] == [r["_id"] for r in stored["answer_records"]]


def test_ximilar_path_and_collection_names(client: TestClient) -> None:
    api = shop(client, 3, name="catalogue")
    for path in ("/v2", "/image_matching/v2"):
        for key in (api.collection, "catalogue"):
            response = client.post(f"{path}/get", json={"records": [{"_id": "s1"}]}, headers={"collection-id": key})
            assert response.status_code == 200 and response.json()["records"][0]["cat"] == "b"
        assert client.post(f"{path}/ping").json()["_service_info"]["_name"] == "Image matching service"
        paged = client.post(f"{path}/allRecords?size=1&page=1", json={}, headers={"collection-id": "catalogue"})
        assert paged.json()["next"] == f"http://testserver{path}/allRecords?size=1&page=2"
    unknown = client.post("/image_matching/v2/get", json={"records": [{"_id": "s1"}]}, headers={"collection-id": "x"})
    assert unknown.status_code == 404 and unknown.json()["status"]["code"] == 404


# --- random's uniformity, through the real storage and index registry --------------------------------------------


def _fill(engine: Engine, name: str, count: int, every: int) -> tuple[str, list[str]]:
    """``count`` records r0..; every ``every``-th has ``hit: true``. Returns the collection and the hit ids."""
    rng = random.Random(count)
    with engine.begin() as connection:
        collection = create_collection(connection, "default", name).id
        batch = [
            NewRecord(f"r{i}", {"hit": i % every == 0}, None, 1, 1, "x", random_bmh1(rng), rng.randbytes(8))
            for i in range(count)
        ]
        upsert_records(connection, collection, batch)
    return collection, [f"r{i}" for i in range(count) if i % every == 0]


CHI2_999 = {8: 26.12, 36: 67.99}  # chi-square quantile 0.999 by degrees of freedom: a fair sampler fails 1 in 1000


def chi_square(counts: Counter[str], total: int) -> float:
    expected = total / len(counts)
    return sum((n - expected) ** 2 / expected for n in counts.values())


@pytest.mark.parametrize("max_probes", [20_000, 7])  # candidates find the matches / too rare: scan, then sample
def test_random_is_uniform(engine: Engine, max_probes: int) -> None:
    first, _ = _fill(engine, "one", 30, 4)
    second, hits = _fill(engine, "two", 40, 4)  # row ids interleave with nothing, but follow another collection's
    with engine.begin() as connection:
        delete_records(connection, second, ["r4", "r5", "r6"])  # holes in the row ids
    hits.remove("r4")
    registry = IndexRegistry(engine)
    browser = RecordBrowser(engine, registry, rng=random.Random(13), max_probes=max_probes)
    draws = 3000
    counts: Counter[str] = Counter()
    for _ in range(draws):
        sample = [r["_id"] for r in browser.sample(second, 3, {"hit": True}, frozenset({"_id"}))]
        assert len(set(sample)) == 3 and set(sample) <= set(hits)
        counts.update(sample)
    assert set(counts) == set(hits) and chi_square(counts, draws * 3) < CHI2_999[len(hits) - 1]
    plain: Counter[str] = Counter()
    for _ in range(draws):
        plain.update(r["_id"] for r in browser.sample(second, 2, None, None))
    assert len(plain) == 37 and chi_square(plain, draws * 2) < CHI2_999[36]
    assert len(browser.sample(first, 100, {"hit": True}, None)) == 8  # fewer match than asked: all of them
    registry.close()


def test_row_ids_track_adds_and_removes() -> None:
    ids = RowIds()
    ids.load([5, 1, 3])
    ids.add(3)  # already there: no change
    ids.add(9)
    ids.remove(1)
    ids.remove(42)  # absent: no error
    ids.add(2)  # below the largest: kept sorted
    assert ids.snapshot().tolist() == [2, 3, 5, 9] and len(ids) == 4
    snapshot = ids.snapshot()
    ids.remove(9)
    ids.add(1)
    assert snapshot.tolist() == [2, 3, 5, 9]  # a snapshot never changes
    assert ids.snapshot().tolist() == [1, 2, 3, 5] and not ids.snapshot().flags.writeable
