"""The Ximilar stateless methods against a real ``matchdb serve`` (uvicorn subprocess), with the spec's own examples.

Images come from a local image server on 127.0.0.1 (allowed through ``MATCHDB_FETCH_ALLOW``) or as ``_base64``.
Expected hashes are computed in the test process with :func:`matchdb.hashing.hash_image` on the same bytes.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from matchdb.hashing import NBITS, HashedImage, hash_image
from tests.imagegen import encode, photo_like
from tests.servers import ImageServer, closed_port, image_server, run_matchdb_server

SERVICE_INFO = {
    "_name": "Image matching service",
    "_info": "Get visual hashes, find (near-)duplicate images and rank them",
}
CONCURRENT = 6
MAX_RECORDS = 20  # MATCHDB_MAX_RECORDS of the server
MAX_BODY = 1_000_000  # MATCHDB_MAX_BODY_BYTES of the server


def _png(width: int, height: int, seed: int) -> bytes:
    return encode(Image.fromarray(photo_like(width, height, seed)), "PNG")


A_PIXELS = Image.fromarray(photo_like(200, 150, seed=3))
IMAGES: dict[str, bytes] = {
    "/a.png": encode(A_PIXELS, "PNG"),
    "/a-q50.jpg": encode(A_PIXELS, "JPEG", quality=50),  # a re-encoded copy of /a.png: a few bits differ
    "/b.png": _png(212, 289, seed=13),  # unrelated
    "/c.jpg": encode(Image.fromarray(photo_like(160, 120, seed=21)), "JPEG", quality=90),
    **{f"/slow/{i}.png": _png(64, 48, seed=100 + i) for i in range(CONCURRENT)},
}
HASHES: dict[str, HashedImage] = {path: hash_image(data) for path, data in IMAGES.items()}


def bits(path_a: str, path_b: str, kind: str = "bmh1") -> int:
    return HASHES[path_a].hashes[kind].hamming(HASHES[path_b].hashes[kind])


def shown(hamming: int, kind: str = "bmh1") -> float:
    """The distance the API reports (API.md section 4): percent of differing bits, one decimal."""
    return round(100 * hamming / NBITS[kind], 1)


@dataclass(frozen=True)
class Env:
    client: httpx.Client
    images: ImageServer
    dead_url: str  # an allowed address where nothing listens


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    dead_port = closed_port()
    redirects = {"/redirect-away": f"http://127.0.0.1:{closed_port()}/x.png"}
    together = [path for path in IMAGES if path.startswith("/slow/")]  # answered only once all are being fetched
    with image_server(IMAGES, redirects=redirects, together=together) as images:
        settings = {
            "MATCHDB_FETCH_READ_TIMEOUT": "120",  # the /slow/ downloads wait for each other, up to a minute
            "MATCHDB_FETCH_ALLOW": f"{images.allow},127.0.0.1:{dead_port}",
            "MATCHDB_MAX_RECORDS": str(MAX_RECORDS),
            "MATCHDB_MAX_BODY_BYTES": str(MAX_BODY),
        }
        with (
            run_matchdb_server(settings, workers=1) as url,
            httpx.Client(base_url=url, timeout=30.0) as client,
        ):
            yield Env(client, images, f"http://127.0.0.1:{dead_port}/missing.jpg")


def post(env: Env, method: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    response = env.client.post(f"/v2/{method}", json=body)
    assert response.status_code == status, response.text
    data: dict[str, Any] = response.json()
    return data


def is_uuid4(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return uuid.UUID(value).version == 4 and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_envelope(body: dict[str, Any], code: int = 200, text: str = "OK") -> str:
    """The common envelope (API.md section 3); returns the request_id."""
    status = body["status"]
    assert set(status) == {"code", "text", "request_id", "proc_id"}
    assert (status["code"], status["text"]) == (code, text)
    assert is_uuid4(status["request_id"]) and is_uuid4(status["proc_id"])
    elapsed = body["statistics"]["processing time"]
    assert isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool)
    assert elapsed >= 0  # seconds this request took: a measure, never a bound on this machine's speed
    request_id: str = status["request_id"]
    return request_id


def ok_status(request_id: str) -> dict[str, Any]:
    return {"code": 200, "text": "OK", "request_id": request_id}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- ping ---


@pytest.mark.parametrize("verb", ["POST", "GET"])
def test_ping(env: Env, verb: str) -> None:
    response = env.client.request(verb, "/v2/ping")
    assert response.status_code == 200
    body = response.json()
    assert body["_service_info"] == SERVICE_INFO
    check_envelope(body)


def test_request_ids_differ_between_requests(env: Env) -> None:
    first, second = post(env, "ping", {}), post(env, "ping", {})
    assert first["status"]["request_id"] != second["status"]["request_id"]


# --- visual_hash ---


def test_visual_hash_url_spec_example(env: Env) -> None:
    url = env.images.url("/a.png")
    body = post(env, "visual_hash", {"records": [{"_url": url}]})
    request_id = check_envelope(body)
    (record,) = body["records"]
    expected = HASHES["/a.png"]
    assert set(record) == {"_url", "_id", "_width", "_height", "_status", "bmh1", "phash"}
    assert record["_url"] == url
    assert is_uuid4(record["_id"])  # assigned when absent
    assert (record["_width"], record["_height"]) == (200, 150)
    assert record["bmh1"] == expected.hashes["bmh1"].to_string()
    assert record["phash"] == expected.hashes["phash"].to_string()
    assert len(record["bmh1"]) == 968 and len(record["phash"]) == 64
    assert set(record["bmh1"] + record["phash"]) == {"0", "1"}
    assert record["_status"] == ok_status(request_id)


def test_visual_hash_assigns_a_fresh_id_each_time(env: Env) -> None:
    body = post(env, "visual_hash", {"records": [{"_url": env.images.url("/c.jpg")}] * 2})
    first, second = (record["_id"] for record in body["records"])
    assert is_uuid4(first) and is_uuid4(second) and first != second


def test_visual_hash_base64_plain_and_data_uri(env: Env) -> None:
    png, jpeg = IMAGES["/a.png"], IMAGES["/c.jpg"]
    extra = {"name": "shoe", "price": 12.5, "tags": ["a", "b"], "nested": {"x": None, "y": [1, {"z": True}]}}
    records = [
        {"_base64": b64(png), "_id": 1, **extra},
        {"_base64": "data:image/jpeg;base64," + b64(jpeg), "_id": "jpeg-1"},
        {"_base64": "data:image/png;base64," + b64(png)},
    ]
    response = env.client.post("/v2/visual_hash", json={"records": records})
    assert response.status_code == 200
    assert b64(jpeg)[:200] not in response.text and b64(png)[:200] not in response.text
    body = response.json()
    request_id = check_envelope(body)
    first, second, third = body["records"]
    for record in body["records"]:
        assert "_base64" not in record
        assert record["_status"] == ok_status(request_id)
    assert first["_id"] == "1"
    assert {key: first[key] for key in extra} == extra
    assert (first["_width"], first["_height"]) == (200, 150)
    assert first["bmh1"] == HASHES["/a.png"].hashes["bmh1"].to_string()
    assert first["phash"] == HASHES["/a.png"].hashes["phash"].to_string()
    assert second["_id"] == "jpeg-1"
    assert (second["_width"], second["_height"]) == (160, 120)
    assert second["bmh1"] == HASHES["/c.jpg"].hashes["bmh1"].to_string()
    assert second["phash"] == HASHES["/c.jpg"].hashes["phash"].to_string()
    assert is_uuid4(third["_id"])
    assert third["bmh1"] == first["bmh1"] and third["phash"] == first["phash"]


@pytest.mark.parametrize(
    ("hash_type", "kinds"),
    [("phash", {"phash"}), ("bmh1", {"bmh1"}), (["phash"], {"phash"}), (["phash", "bmh1"], {"bmh1", "phash"})],
)
def test_visual_hash_hash_type(env: Env, hash_type: str | list[str], kinds: set[str]) -> None:
    body = post(env, "visual_hash", {"records": [{"_url": env.images.url("/b.png")}], "hash_type": hash_type})
    check_envelope(body)
    (record,) = body["records"]
    assert {"bmh1", "phash"} & set(record) == kinds
    for kind in kinds:
        assert record[kind] == HASHES["/b.png"].hashes[kind].to_string()


def test_visual_hash_url_404_is_a_record_failure(env: Env) -> None:
    url = env.images.url("/no-such-image.png")
    body = post(env, "visual_hash", {"records": [{"_url": url}, {"_url": env.images.url("/c.jpg")}]})
    request_id = check_envelope(body, 300, "MIXED_RESULT")
    failed, good = body["records"]
    assert failed["_status"] == {
        "code": 400,
        "text": f"Error Loading Image: HTTP 404 from '{url}'",
        "request_id": request_id,
    }
    assert "bmh1" not in failed and "_width" not in failed
    assert good["_status"] == ok_status(request_id)


@pytest.mark.parametrize("host", ["127.0.0.1:{closed}", "[::1]:{allowed}", "2130706433:{closed}", "0x7f.1:{closed}"])
def test_real_server_refuses_loopback_not_allowed(env: Env, host: str) -> None:
    """The SSRF guard as ``matchdb serve`` wires it from MATCHDB_FETCH_ALLOW (names here resolve numerically)."""
    url = "http://" + host.format(closed=closed_port(), allowed=env.images.port) + "/a.png"
    body = post(env, "visual_hash", {"records": [{"_url": url}]}, status=400)
    check_envelope(body, 400, "Error: no record could be processed (see each record's _status)")
    text = body["records"][0]["_status"]["text"]
    assert text.startswith("Error Loading Image: URL not allowed: "), text
    assert "loopback address" in text


def test_real_server_refuses_redirect_to_loopback(env: Env) -> None:
    before = env.images.hits["/redirect-away"]
    body = post(env, "visual_hash", {"records": [{"_url": env.images.url("/redirect-away")}]}, status=400)
    assert (
        body["records"][0]["_status"]["text"] == "Error Loading Image: URL not allowed: 127.0.0.1 is a loopback address"
    )
    assert env.images.hits["/redirect-away"] == before + 1  # refused once, not retried


# --- limits set through the environment ---


def test_max_records_from_environment(env: Env) -> None:
    record = {"_base64": b64(IMAGES["/slow/0.png"])}
    body = post(env, "visual_hash", {"records": [record] * MAX_RECORDS})
    check_envelope(body)
    body = post(env, "visual_hash", {"records": [record] * (MAX_RECORDS + 1)}, status=400)
    check_envelope(body, 400, f"Too many records: {MAX_RECORDS + 1} > limit {MAX_RECORDS}")


def test_body_too_large_from_environment(env: Env) -> None:
    padding = "x" * MAX_BODY
    body = post(env, "visual_hash", {"records": [{"_base64": b64(IMAGES["/c.jpg"]), "padding": padding}]}, status=413)
    check_envelope(body, 413, f"Request body too large: more than {MAX_BODY} bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        yield b'{"records": [{"padding": "'
        for _ in range(MAX_BODY // 50_000 + 1):
            yield b"x" * 50_000
        yield b'"}]}'

    response = env.client.post("/v2/visual_hash", content=chunks())
    assert response.status_code == 413
    check_envelope(response.json(), 413, f"Request body too large: more than {MAX_BODY} bytes")


# --- remove_duplicates ---


def test_remove_duplicates_spec_example(env: Env) -> None:
    url1, url2 = env.images.url("/a.png"), env.images.url("/b.png")
    records = [{"_url": url1, "_id": 1}, {"_url": url1, "_id": 2}, {"_url": url2, "_id": 3}]
    body = post(env, "remove_duplicates", {"records": records})
    request_id = check_envelope(body)
    assert body["records"] == [
        {
            "_url": url1,
            "_status": ok_status(request_id),
            "_id": "1",
            "_width": 200,
            "_height": 150,
            "removed_records": [
                {"_url": url1, "_status": ok_status(request_id), "_id": "2", "_width": 200, "_height": 150}
            ],
        },
        {"_url": url2, "_status": ok_status(request_id), "_id": "3", "_width": 212, "_height": 289},
    ]


def test_remove_duplicates_reencoded_copy_fixture_is_near() -> None:
    """Precondition of the range tests: the JPEG copy differs by a few bits, not zero and not many."""
    assert bits("/a.png", "/a-q50.jpg") >= 1 and shown(bits("/a.png", "/a-q50.jpg")) <= 2.0
    assert shown(bits("/a.png", "/b.png")) > 20


def _range_cases() -> list[tuple[float, bool]]:
    near = shown(bits("/a.png", "/a-q50.jpg"))
    return [(0, False), (0.0, False), (round(near - 0.1, 1), False), (near, True), (5, True), (5.0, True), (100, True)]


@pytest.mark.parametrize(("limit", "merged"), _range_cases())
def test_remove_duplicates_range(env: Env, limit: float, merged: bool) -> None:
    records = [
        {"_url": env.images.url("/a.png"), "_id": "original"},
        {"_url": env.images.url("/b.png"), "_id": "other"},
        {"_url": env.images.url("/a-q50.jpg"), "_id": "copy"},
    ]
    body = post(env, "remove_duplicates", {"records": records, "range": limit})
    check_envelope(body)
    if limit >= 100:  # everything is within 100 %: the first record takes all
        assert [r["_id"] for r in body["records"]] == ["original"]
        assert [r["_id"] for r in body["records"][0]["removed_records"]] == ["other", "copy"]
    elif merged:
        assert [r["_id"] for r in body["records"]] == ["original", "other"]
        assert [r["_id"] for r in body["records"][0]["removed_records"]] == ["copy"]
        assert "removed_records" not in body["records"][1]
    else:
        assert [r["_id"] for r in body["records"]] == ["original", "other", "copy"]
        assert all("removed_records" not in r for r in body["records"])


def test_remove_duplicates_phash(env: Env) -> None:
    records = [{"_url": env.images.url("/a.png")}, {"_url": env.images.url("/a-q50.jpg")}]
    near = shown(bits("/a.png", "/a-q50.jpg", "phash"), "phash")
    body = post(env, "remove_duplicates", {"records": records, "hash_type": "phash", "range": near})
    check_envelope(body)
    assert len(body["records"]) == 1 and len(body["records"][0]["removed_records"]) == 1


# --- rank_images ---


def test_rank_images_spec_example(env: Env) -> None:
    url1, url2, url3 = env.images.url("/a.png"), env.images.url("/a-q50.jpg"), env.images.url("/b.png")
    body = post(
        env,
        "rank_images",
        {
            "query_record": {"_url": url1},
            "records": [{"_url": url1}, {"_url": url2}, {"_url": url3, "test": "insomnia"}, {"_url": env.dead_url}],
        },
    )
    request_id = check_envelope(body, 300, "MIXED_RESULT")
    (query,) = body["query_records"]
    assert query["_url"] == url1 and (query["_width"], query["_height"]) == (200, 150)
    assert "_id" not in query  # a query record never gets an assigned _id
    assert query["_status"] == ok_status(request_id)

    answers = body["answer_records"]
    assert [a["_url"] for a in answers] == [url1, url2, url3]
    assert answers[2]["test"] == "insomnia"
    assert [(a["_width"], a["_height"]) for a in answers] == [(200, 150), (200, 150), (212, 289)]
    assert all(is_uuid4(a["_id"]) for a in answers)
    distances = body["answer_distances"]
    assert distances[0] == 0.0
    assert distances == sorted(distances)
    assert distances == [0.0, shown(bits("/a.png", "/a-q50.jpg")), shown(bits("/a.png", "/b.png"))]
    assert body["answer_hamming"] == [0, bits("/a.png", "/a-q50.jpg"), bits("/a.png", "/b.png")]

    (skipped,) = body["skipped_records"]
    assert skipped["_url"] == env.dead_url and is_uuid4(skipped["_id"])
    assert skipped["_status"]["code"] == 400 and skipped["_status"]["request_id"] == request_id
    assert skipped["_status"]["text"].startswith(
        f"Error Loading Image: Unable to download image from '{env.dead_url}', Attempts: 3"
    )
    assert "_width" not in skipped


def test_rank_images_phash(env: Env) -> None:
    query = {"_base64": b64(IMAGES["/b.png"])}
    records = [{"_url": env.images.url("/a.png")}, {"_url": env.images.url("/b.png")}]
    body = post(env, "rank_images", {"query_record": query, "records": records, "hash_type": "phash"})
    check_envelope(body)
    assert [a["_url"] for a in body["answer_records"]] == [env.images.url("/b.png"), env.images.url("/a.png")]
    assert body["answer_distances"] == [0.0, shown(bits("/b.png", "/a.png", "phash"), "phash")]
    assert body["skipped_records"] == []
    assert "_base64" not in body["query_records"][0]


RANK_PATHS = ["/c.jpg", "/a-q50.jpg", "/b.png", "/a.png"]  # request order; ranked against /a.png


def _cut_cases() -> list[tuple[dict[str, Any], list[str]]]:
    near = shown(bits("/a.png", "/a-q50.jpg"))
    ranked = sorted(RANK_PATHS, key=lambda p: (bits("/a.png", p), RANK_PATHS.index(p)))
    assert ranked[:2] == ["/a.png", "/a-q50.jpg"]
    return [
        ({}, ranked),
        ({"k": 2}, ranked[:2]),
        ({"k": 1}, ranked[:1]),
        ({"k": 10}, ranked),
        ({"radius": 0}, ["/a.png"]),
        ({"radius": near}, ["/a.png", "/a-q50.jpg"]),
        ({"radius": round(near - 0.1, 1)}, ["/a.png"]),
        ({"radius": 100}, ranked),
        ({"radius": near, "k": 1}, ["/a.png"]),
        ({"radius": 100, "k": 3}, ranked[:3]),
    ]


@pytest.mark.parametrize(("options", "expected"), _cut_cases())
def test_rank_images_k_and_radius(env: Env, options: dict[str, Any], expected: list[str]) -> None:
    records = [{"_url": env.images.url(path), "_id": path} for path in RANK_PATHS]
    query = {"_url": env.images.url("/a.png")}
    body = post(env, "rank_images", {"query_record": query, "records": records, **options})
    check_envelope(body)
    assert [a["_id"] for a in body["answer_records"]] == expected
    assert body["answer_distances"] == [shown(bits("/a.png", path)) for path in expected]
    assert body["answer_distances"] == sorted(body["answer_distances"])


def test_rank_images_ties_in_request_order(env: Env) -> None:
    records = [{"_url": env.images.url("/b.png"), "_id": str(i)} for i in range(5)]
    body = post(env, "rank_images", {"query_record": {"_url": env.images.url("/a.png")}, "records": records})
    assert [a["_id"] for a in body["answer_records"]] == ["0", "1", "2", "3", "4"]


# --- concurrency ---


def test_concurrent_requests_are_served_in_parallel(env: Env) -> None:
    """One worker process, 6 requests whose images the image server answers only once all 6 downloads are under way
    at the same time (a barrier): served together, not one after the other, and each answer belongs to its own
    request. Served one at a time, the first download would wait for the others that never come, and get a 503
    after a minute: an order of events, not a speed, so a loaded machine does not fail it."""
    paths = [f"/slow/{i}.png" for i in range(CONCURRENT)]

    def one(path: str) -> tuple[str, dict[str, Any]]:
        with httpx.Client(base_url=str(env.client.base_url), timeout=300.0) as client:
            response = client.post("/v2/visual_hash", json={"records": [{"_url": env.images.url(path), "_id": path}]})
        assert response.status_code == 200, response.text
        return path, response.json()

    with ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        results = list(pool.map(one, paths))
    for path, body in results:
        (record,) = body["records"]
        assert record["_status"]["code"] == 200, f"the downloads did not overlap: {record['_status']}"
        check_envelope(body)
        assert record["_id"] == path
        assert record["bmh1"] == HASHES[path].hashes["bmh1"].to_string()
        assert record["phash"] == HASHES[path].hashes["phash"].to_string()
    assert len({body["status"]["request_id"] for _, body in results}) == CONCURRENT
