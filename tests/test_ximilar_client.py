"""Ximilar's own Python client (``ximilar-client``, ``ImageMatchingSearchClient``) works against a real
``matchdb serve`` unchanged: only ``endpoint`` is ours, and ``resource_name=None`` (else its constructor asks
Ximilar's authorization server first). Every method is called the way its docstring says, on SQLite and Postgres.

Every HTTP request the client makes goes through ``requests.Session.send``, wrapped here to refuse any host but
127.0.0.1 (nothing reaches the internet) and to record the calls.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import select
from ximilar.client import ImageMatchingSearchClient
from ximilar.client.exceptions import XimilarClientException

from matchdb.storage.database import make_engine
from matchdb.storage.schema import records
from matchdb.storage.tokens import create_token
from tests.imagegen import encode, photo_like
from tests.servers import LOOPBACK, image_server, run_matchdb_server

CATEGORIES = ("shoe", "bag", "hat")
LONG_TOKEN = "mdb_" + "j" * 76  # 80 characters: the client sends it as "JWT <token>"


@dataclass
class Calls:
    """(method, path, query) of every request the client sent, all to 127.0.0.1."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)

    def paths(self, suffix: str) -> list[str]:
        return [query for _, path, query in self.seen if path.endswith(suffix)]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    recorded = Calls()
    send = requests.Session.send

    def guarded(self: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(str(request.url))
        assert url.hostname == LOOPBACK, f"the client tried to reach {request.url}"
        recorded.seen.append((str(request.method), url.path, url.query))
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", guarded)
    return recorded


@dataclass
class Served:
    url: str
    database_url: str
    token: str
    images: dict[str, Path]
    picture_url: str  # r47's image, on the local image server


def _photo(seed: int) -> bytes:
    return encode(Image.fromarray(photo_like(96, 64, seed=seed)), "JPEG", quality=92)


@pytest.fixture
def served(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """A real ``matchdb serve`` (uvicorn) on a fresh migrated database that holds two tokens, with a collection
    named "shop"; and an image server on 127.0.0.1 for ``_url`` records."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        token, _ = create_token(connection)
        create_token(connection, token=LONG_TOKEN)
    engine.dispose()
    images = {f"r{i}": tmp_path / f"r{i}.jpg" for i in range(48)}
    for i, path in enumerate(images.values()):
        path.write_bytes(_photo(i))
    with image_server({"/r47.jpg": _photo(47)}) as pictures:
        env = {"MATCHDB_DATABASE_URL": database_url, "MATCHDB_FETCH_ALLOW": pictures.allow}
        with run_matchdb_server(env) as url:
            created = httpx.post(
                f"{url}/v2/collections", json={"name": "shop"}, headers={"Authorization": f"Token {token}"}
            )
            assert created.status_code == 200, created.text
            yield Served(url, database_url, token, images, pictures.url("/r47.jpg"))


def _record(i: int, served: Served) -> dict[str, Any]:
    """48 records the ways the client takes images: ``_file`` (read and sent as ``_base64``; some with
    ``noresize``), ``_base64`` (decoded and re-encoded by the client with OpenCV), raw pixels (``_img_data`` with
    ``_color_space``) and ``_url``."""
    record: dict[str, Any] = {"_id": f"r{i}", "category": CATEGORIES[i % 3], "price": i}
    path = served.images[f"r{i}"]
    if i == 47:
        record["_url"] = served.picture_url
    elif i % 4 == 1:
        record["_base64"] = base64.b64encode(path.read_bytes()).decode()
    elif i % 4 == 2:
        record["_img_data"] = np.asarray(Image.open(path).convert("RGB"))
        record["_color_space"] = "RGB"
    else:
        record["_file"] = str(path)
        record["noresize"] = i % 2 == 0
    return record


def test_every_image_matching_method_against_matchdb(served: Served, calls: Calls) -> None:
    client = ImageMatchingSearchClient(
        served.token, collection_id="shop", endpoint=f"{served.url}/image_matching/v2/", resource_name=None
    )
    assert client.headers["Authorization"] == f"Token {served.token}"
    assert client.ping()["status"]["code"] == 200

    # insert: in parallel batches, as the client's own helper does it
    results = client.parallel_records_processing(
        [_record(i, served) for i in range(48)], method=client.insert, max_workers=2, batch_size=10
    )
    assert len(results) == 5 and all(result["status"]["code"] == 200 for result in results)
    assert sorted(r["_id"] for result in results for r in result["records"]) == sorted(f"r{i}" for i in range(48))

    # get_records with chosen fields: every other attribute is left out
    got = client.get_records([{"_id": "r1"}, {"_id": "r2"}], fields_to_return=["_id", "category"])
    assert [set(r) for r in got["records"]] == [{"_id", "category", "_status"}] * 2
    assert [r["category"] for r in got["records"]] == ["bag", "hat"]
    assert set(client.get_records([{"_id": "r3"}])["records"][0]) == {"_id", "_status"}  # the client's default

    # nothing the client consumes itself is stored
    everything = client.get_records([{"_id": f"r{i}"} for i in range(48)], fields_to_return=["*"])["records"]
    assert all(r["_status"]["code"] == 200 and r["price"] == int(r["_id"][1:]) for r in everything)
    client_keys = {"_file", "noresize", "_img_data", "_color_space", "_base64"}
    assert not any(client_keys & set(r) for r in everything)
    assert [r.get("_url") for r in everything if "_url" in r] == [served.picture_url]
    engine = make_engine(served.database_url)
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(select(records.c.attributes))]
    engine.dispose()
    assert len(stored) == 48 and all(set(attributes) == {"category", "price"} for attributes in stored)

    # update: default fields_to_return ["*"]
    updated = client.update([{"_id": "r4", "price": 99, "colour": "red"}])
    assert updated["records"][0] == {**updated["records"][0], "category": "bag", "price": 99, "colour": "red"}
    assert updated["records"][0]["_width"] == 96

    # get_all_ids: one streamed answer, all of them, in insertion order (the parallel batches' order may vary)
    ids = client.get_all_ids()
    order = [r["_id"] for r in ids["answer_records"]]
    assert sorted(order) == sorted(f"r{i}" for i in range(48)) and ids["answer_count"] == 48 and "next" not in ids
    bags = client.get_all_ids(fields=["category"], filterf={"category": "bag"})["answer_records"]
    assert [r["_id"] for r in bags] == [i for i in order if int(i[1:]) % 3 == 1]
    assert all(r == {"_id": r["_id"], "category": "bag"} for r in bags)

    # all_records_iter over 7 pages of 7: each record exactly once, in that order
    pages_before = len(calls.paths("/allRecords"))
    iterated = [r["_id"] for r in client.all_records_iter(batch_size=7)]
    assert Counter(iterated) == Counter(f"r{i}" for i in range(48)) and iterated == order
    assert calls.paths("/allRecords")[pages_before:] == [f"size=7&page={page}" for page in range(1, 8)]
    batches = list(client.all_records_iter(fields_to_return=["_id", "price"], batch_size=10, return_batch=True))
    assert [len(batch) for batch in batches] == [10, 10, 10, 10, 8]
    assert [r for batch in batches for r in batch if r["_id"] == "r4"] == [{"_id": "r4", "price": 99}]

    page = client.allRecords(size=5, page=2, fields_to_return=["_id"])
    assert [r["_id"] for r in page["answer_records"]] == order[5:10]
    assert page["answer_count"] == 48 and page["next"].endswith("/image_matching/v2/allRecords?size=5&page=3")

    # random with a filter: 5 distinct matching records
    drawn = client.random(count=5, filter={"category": "hat"}, fields_to_return=["_id", "category"])
    drawn_ids = [r["_id"] for r in drawn["answer_records"]]
    assert len(set(drawn_ids)) == 5 and all(r["category"] == "hat" for r in drawn["answer_records"])
    assert len(client.random()["answer_records"]) == 10

    # search: by image (a local file the client reads), and by a stored _id with a filter
    found = client.search({"_file": str(served.images["r3"])}, k=3)  # r3 was inserted from that file too
    assert found["answer_records"][0] == {"_id": "r3"} and found["answer_distances"][0] == 0.0
    assert len(found["answer_records"]) == 3
    shoes = client.search({"_id": "r6"}, filter={"category": "shoe"}, k=5, fields_to_return=["_id", "category"])
    assert len(shoes["answer_records"]) == 5 and "r6" not in [r["_id"] for r in shoes["answer_records"]]
    assert all(r["category"] == "shoe" for r in shoes["answer_records"])

    # search_and_rank: the given stored records ranked against the query
    ranked = client.search_and_rank({"_id": "r5"}, [{"_id": "r7"}, {"_id": "r5"}, {"_id": "r8"}])
    assert ranked["answer_records"][0]["_id"] == "r5" and ranked["answer_distances"][0] == 0.0
    assert len(ranked["answer_records"]) == 3

    # several queries in one visualKNN (construct_data's records)
    queries = [{"_file": str(served.images["r8"])}, {"_id": "r9"}]
    batch = client.post("visualKNN", data=client.construct_data(records=queries, k=1))
    assert batch["records"][0]["answer_records"] == [{"_id": "r8"}]
    assert batch["records"][1]["answer_records"] == client.search({"_id": "r9"}, k=1)["answer_records"]  # not r9

    # the stateless methods through the client's generic helper (it reads the files and sends _base64)
    hashed = client.custom_endpoint_processing([{"_file": str(served.images["r3"])}], "visual_hash")
    assert len(hashed["records"][0]["bmh1"]) == 968 and len(hashed["records"][0]["phash"]) == 64
    twice = [{"_file": str(served.images["r3"]), "_id": "a"}, {"_file": str(served.images["r3"]), "_id": "b"}]
    deduped = client.custom_endpoint_processing(twice, "remove_duplicates")
    assert [r["_id"] for r in deduped["records"]] == ["a"] and deduped["records"][0]["removed_records"][0]["_id"] == "b"

    # remove; then the record is gone (a 404 _status, and the client's status check raises)
    assert client.remove([{"_id": "r0"}])["status"]["code"] == 200
    gone = client.get_records([{"_id": "r0"}])
    assert gone["records"][0]["_status"]["code"] == 404
    with pytest.raises(XimilarClientException):
        client.check_json_status(gone)
    assert client.get_all_ids()["answer_count"] == 47

    # the same client on /v2/, a long token (sent as "JWT"), and a wrong token
    plain = ImageMatchingSearchClient(served.token, "shop", endpoint=f"{served.url}/v2/", resource_name=None)
    assert plain.get_all_ids()["answer_count"] == 47
    jwt = ImageMatchingSearchClient(LONG_TOKEN, "shop", endpoint=f"{served.url}/v2/", resource_name=None)
    assert jwt.headers["Authorization"].startswith("JWT ") and jwt.random(count=2)["status"]["code"] == 200
    wrong = ImageMatchingSearchClient(
        "mdb_not-a-token-at-all", "shop", endpoint=f"{served.url}/v2/", resource_name=None
    )
    assert wrong.ping()["status"]["code"] == 401
    assert {method for method, _, _ in calls.seen} == {"POST"}
