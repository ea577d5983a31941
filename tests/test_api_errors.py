"""Every error path of the stateless API, in-process (``create_app`` + Starlette's TestClient, lifespan running).

The app's URL fetcher is replaced by one whose DNS is a fixed table and whose network backend connects only to the
local image server on 127.0.0.1: any other connection attempt is recorded as a violation (and fails the test), so
nothing here can reach outside loopback whatever the SSRF guard does.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore
import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.fetch import Fetcher
from matchdb.hashing import hash_image
from matchdb.storage.database import make_engine, upgrade
from matchdb.web.app import create_app
from tests.imagegen import encode, photo_like
from tests.servers import ImageServer, closed_port, image_server

ALL_FAILED = "Error: no record could be processed (see each record's _status)"
METHODS = ["visual_hash", "remove_duplicates", "rank_images"]


def _png(width: int, height: int, seed: int) -> bytes:
    return encode(Image.fromarray(photo_like(width, height, seed)), "PNG")


GOOD = _png(24, 16, seed=5)
GOOD_B64 = base64.b64encode(GOOD).decode()
TINY_B64 = base64.b64encode(encode(Image.new("RGB", (4, 4), (10, 200, 30)), "PNG")).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", binascii.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A well-formed PNG header claiming width x height pixels (2.5 gigapixels), with almost no data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


# --- a network backend and resolver that keep every connection on the local image server ---


@dataclass
class Guard:
    """What the fetcher tried: every connection and resolution, and any that would have left the sandbox."""

    permitted: set[tuple[str, int]] = field(default_factory=set)
    hosts: dict[str, list[str]] = field(default_factory=dict)
    connects: list[tuple[str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        if host not in self.hosts:
            self.violations.append(f"unexpected DNS resolution of {host}")
            raise OSError(f"test resolver does not know {host}")
        return self.hosts[host]


class GuardBackend(httpcore.AsyncNetworkBackend):
    """Connects only to ``guard.permitted`` (the image server); anything else is a violation and never connects."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.guard.connects.append((host, port))
        if (host, port) not in self.guard.permitted:
            self.guard.violations.append(f"attempted a connection to {host}:{port}")
            raise httpcore.ConnectError(f"test backend refuses {host}:{port}")
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# --- fixtures ---


@dataclass(frozen=True)
class Env:
    client: TestClient
    images: ImageServer
    guard: Guard
    closed_port: int


def _database(folder: Path) -> str:
    url = f"sqlite:///{folder / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    closed = closed_port()
    redirects = {
        "/to-closed-port": f"http://127.0.0.1:{closed}/x.png",
        "/to-ipv6-loopback": f"http://[::1]:{closed}/x.png",
        "/to-metadata": "http://169.254.169.254/latest/meta-data",
        "/to-private": "http://10.1.2.3/x.jpg",
        "/to-loopback-name": "http://internal.example.test/x.png",
        "/to-good": "/good.png",
    }
    with image_server({"/good.png": GOOD, "/text.txt": b"hello, not an image"}, redirects=redirects) as server:
        yield server


def _guarded_fetcher(guard: Guard) -> Fetcher:
    """A fetcher with the test's resolver and a network backend that records any connection it must not make."""
    return Fetcher(
        connect_timeout=2.0,
        read_timeout=2.0,
        attempts=3,
        backoff=0.01,
        allow=[f"127.0.0.1:{port}" for _, port in guard.permitted],
        resolver=guard.resolve,
        network_backend=GuardBackend(guard),
    )


@pytest.fixture(scope="module")
def env(images: ImageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    guard = Guard(
        permitted={("127.0.0.1", images.port)},
        hosts={
            "images.example.test": ["127.0.0.1"],  # resolves to the allowed image server
            "internal.example.test": ["127.0.0.1"],
            "mixed.example.test": ["93.184.216.34", "10.0.0.7"],
            "metadata.example.test": ["169.254.169.254"],
            "v6.example.test": ["::1"],
        },
    )
    settings = Settings(
        database_url=_database(tmp_path_factory.mktemp("api-errors")),
        fetch_allow=(images.allow,),
        fetch_attempts=3,
    )
    fetcher = _guarded_fetcher(guard)
    app = create_app(settings, fetcher=fetcher)
    with TestClient(app, raise_server_exceptions=True) as client:
        yield Env(client, images, guard, closed_port())
        assert client.portal is not None
        client.portal.call(fetcher.aclose)


@pytest.fixture(autouse=True)
def no_escape(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the app: no connection or DNS lookup outside the local image server."""
    yield
    if "env" in request.fixturenames:
        guard: Guard = request.getfixturevalue("env").guard
        assert guard.violations == [], guard.violations


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An app with tiny limits: 3 records per request, 2000-byte bodies. It never fetches URLs."""
    settings = Settings(
        database_url=_database(tmp_path_factory.mktemp("api-limits")), max_records=3, max_body_bytes=2000
    )
    with TestClient(create_app(settings)) as client:
        yield client


# --- helpers ---


def call(
    client: TestClient, method: str, body: Any = None, *, content: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    if content is not None:
        response = client.post(f"/v2/{method}", content=content, headers={"content-type": "application/json"})
    else:
        response = client.post(f"/v2/{method}", json=body)
    data: dict[str, Any] = response.json()
    return response.status_code, data


def check_error(http: int, body: dict[str, Any], code: int, *fragments: str) -> str:
    """HTTP status and envelope of a failed request; every fragment must be in ``status.text``."""
    assert http == code, body
    status = body["status"]
    assert status["code"] == code
    assert {"request_id", "proc_id"} <= set(status)
    assert isinstance(body["statistics"]["processing time"], float)
    text: str = status["text"]
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    return text


def body_for(method: str, records: list[Any]) -> dict[str, Any]:
    if method == "rank_images":
        return {"query_record": {"_base64": GOOD_B64}, "records": records}
    return {"records": records}


def one_record_status(client: TestClient, record: Any, method: str = "visual_hash") -> dict[str, Any]:
    """Send one bad record: the request fails as a whole (400) and the record says why."""
    http, body = call(client, method, body_for(method, [record]))
    check_error(http, body, 400, ALL_FAILED)
    records = body["skipped_records"] if method == "rank_images" else body["records"]
    (out,) = records
    assert isinstance(out, dict)
    status: dict[str, Any] = out["_status"]
    assert status["code"] == 400
    assert status["request_id"] == body["status"]["request_id"]
    assert "bmh1" not in out and "phash" not in out and "_width" not in out
    return out


# --- request-level errors ---


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"records": [', "Invalid JSON"),
        (b"\xff\xfe\x00garbage", "Invalid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"records"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"42", "must be a JSON object"),
    ],
)
def test_malformed_body(env: Env, method: str, content: bytes, fragment: str) -> None:
    http, body = call(env.client, method, content=content)
    check_error(http, body, 400, fragment)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("patch", "fragments"),
    [
        ({"records": None}, ("Missing field 'records'",)),  # None: the key is removed
        ({"records": {"_base64": GOOD_B64}}, ("'records' must be a list",)),
        ({"records": "x"}, ("'records' must be a list",)),
        ({"records": []}, ("'records' must not be empty",)),
        ({"hash_type": "md5"}, ("Unknown hash_type", "md5")),
        ({"hash_type": 7}, ("Unknown hash_type",)),
        ({"hash_type": ""}, ("Unknown hash_type",)),
    ],
)
def test_invalid_request_fields(env: Env, method: str, patch: dict[str, Any], fragments: tuple[str, ...]) -> None:
    body = body_for(method, [{"_base64": GOOD_B64}])
    body.update(patch)
    body = {key: value for key, value in body.items() if value is not None}
    http, out = call(env.client, method, body)
    check_error(http, out, 400, *fragments)


def test_empty_body_is_missing_records(env: Env) -> None:
    http, body = call(env.client, "visual_hash", content=b"")
    check_error(http, body, 400, "Missing field 'records'")


@pytest.mark.parametrize(
    ("hash_type", "fragment"),
    [(["bmh1", "md5"], "md5"), ([], "Unknown hash_type"), ([["bmh1"]], "Unknown hash_type")],
)
def test_visual_hash_bad_hash_type_list(env: Env, hash_type: Any, fragment: str) -> None:
    http, body = call(env.client, "visual_hash", {"records": [{"_base64": GOOD_B64}], "hash_type": hash_type})
    check_error(http, body, 400, "Unknown hash_type", fragment)


@pytest.mark.parametrize("method", ["remove_duplicates", "rank_images"])
def test_hash_type_list_only_for_visual_hash(env: Env, method: str) -> None:
    http, body = call(env.client, method, {**body_for(method, [{"_base64": GOOD_B64}]), "hash_type": ["bmh1"]})
    check_error(http, body, 400, "Unknown hash_type")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (-1, "between 0 and 100"),
        (-0.1, "between 0 and 100"),
        (100.5, "between 0 and 100"),
        ("5", "must be a number"),
        (True, "must be a number"),
        ([5], "must be a number"),
        ({"x": 1}, "must be a number"),
    ],
)
def test_bad_range(env: Env, value: Any, fragment: str) -> None:
    http, body = call(env.client, "remove_duplicates", {"records": [{"_base64": GOOD_B64}], "range": value})
    check_error(http, body, 400, "'range'", fragment)


@pytest.mark.parametrize(
    ("literal", "fragments"),
    [
        (b"NaN", ("Invalid JSON", "NaN")),  # not JSON at all: refused by the parser
        (b"Infinity", ("Invalid JSON", "Infinity")),
        (b"-Infinity", ("Invalid JSON", "Infinity")),
        (b"1e999", ("'range'", "must be a number")),  # valid JSON that overflows to inf
    ],
)
def test_non_finite_range(env: Env, literal: bytes, fragments: tuple[str, ...]) -> None:
    content = b'{"records": [{"_base64": "' + GOOD_B64.encode() + b'"}], "range": ' + literal + b"}"
    http, body = call(env.client, "remove_duplicates", content=content)
    check_error(http, body, 400, *fragments)


@pytest.mark.parametrize(
    ("patch", "fragments"),
    [
        ({"query_record": None}, ("Missing field 'query_record'",)),
        ({"query_record": "http://x/a.png"}, ("Missing field 'query_record'",)),
        ({"query_record": [{"_base64": GOOD_B64}]}, ("Missing field 'query_record'",)),
        ({"k": 0}, ("'k' must be a positive integer",)),
        ({"k": -3}, ("'k' must be a positive integer",)),
        ({"k": "2"}, ("'k' must be a positive integer",)),
        ({"k": 1.5}, ("'k' must be a positive integer",)),
        ({"k": True}, ("'k' must be a positive integer",)),
        ({"radius": -1}, ("'radius'", "between 0 and 100")),
        ({"radius": "10"}, ("'radius'", "must be a number")),
        ({"radius": 101}, ("'radius'", "between 0 and 100")),
    ],
)
def test_rank_images_bad_fields(env: Env, patch: dict[str, Any], fragments: tuple[str, ...]) -> None:
    body = body_for("rank_images", [{"_base64": GOOD_B64}])
    body.update(patch)
    body = {key: value for key, value in body.items() if value is not None}
    http, out = call(env.client, "rank_images", body)
    check_error(http, out, 400, *fragments)


# ("/" is the web console's page now: GET only, so a POST there is a 405 like any wrong verb)
@pytest.mark.parametrize(
    "path", ["/v2/no_such_method", "/v2/", "/v1/visual_hash", "/no_such_page", "/v2/visual_hash/extra"]
)
def test_unknown_method_is_404_in_envelope(env: Env, path: str) -> None:
    response = env.client.post(path, json={"records": [{"_base64": GOOD_B64}]})
    check_error(response.status_code, response.json(), 404, "Unknown method")


def test_wrong_http_verb_is_enveloped(env: Env) -> None:
    response = env.client.get("/v2/visual_hash")
    check_error(response.status_code, response.json(), 405, "Method Not Allowed")
    response = env.client.post("/", json={})
    check_error(response.status_code, response.json(), 405, "Method Not Allowed")


# --- limits ---


def test_too_many_records(limited: TestClient) -> None:
    http, body = call(limited, "visual_hash", {"records": [{"_base64": TINY_B64}] * 4})
    check_error(http, body, 400, "Too many records", "4", "3")


def test_records_at_the_limit_pass(limited: TestClient) -> None:
    http, body = call(limited, "visual_hash", {"records": [{"_base64": TINY_B64}] * 3})
    assert http == 200 and body["status"]["code"] == 200 and len(body["records"]) == 3


@pytest.mark.parametrize("method", METHODS)
def test_body_too_large(limited: TestClient, method: str) -> None:
    http, body = call(limited, method, {"records": [{"_base64": TINY_B64, "padding": "x" * 3000}]})
    check_error(http, body, 413, "too large", "2000")


def test_body_too_large_without_content_length(limited: TestClient) -> None:
    """A chunked body has no Content-Length to check up front: the cap applies while reading."""
    payload = b'{"records": [{"_base64": "' + TINY_B64.encode() + b'", "padding": "' + b"x" * 3000 + b'"}]}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(payload), 500):
            yield payload[start : start + 500]

    response = limited.post("/v2/visual_hash", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    check_error(response.status_code, response.json(), 413, "too large")


# --- JSON the parser accepts but the app then fails on: known bugs (500 instead of 400) ---

RECORD = '{"_base64": "' + GOOD_B64 + '"'


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constant_in_attribute(env: Env, literal: str) -> None:
    content = '{"records": [' + RECORD + ', "score": ' + literal + "}]}"
    http, body = call(env.client, "visual_hash", content=content.encode())
    check_error(http, body, 400, "JSON")


def test_deeply_nested_json(env: Env) -> None:
    content = '{"records": [' + RECORD + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}]}"
    http, body = call(env.client, "visual_hash", content=content.encode())
    check_error(http, body, 400, "JSON")


def test_integer_beyond_python_digit_limit(env: Env) -> None:
    content = '{"records": [' + RECORD + ', "x": ' + "1" * 5000 + "}]}"
    http, body = call(env.client, "visual_hash", content=content.encode())
    check_error(http, body, 400, "JSON")


@pytest.mark.parametrize(("method", "name"), [("remove_duplicates", "range"), ("rank_images", "radius")])
def test_huge_integer_threshold(env: Env, method: str, name: str) -> None:
    content = '{"query_record": ' + RECORD + "}, " + '"records": [' + RECORD + '}], "' + name + '": 1' + "0" * 400 + "}"
    http, body = call(env.client, method, content=content.encode())
    check_error(http, body, 400, f"'{name}'", "between 0 and 100")


def test_lone_surrogate_in_attribute(env: Env) -> None:
    content = '{"records": [' + RECORD + ', "name": "\\ud800"}]}'
    http, body = call(env.client, "visual_hash", content=content.encode())
    assert http != 500, body
    if http == 200:
        assert body["records"][0]["name"] == "\ud800"
    else:
        check_error(http, body, 400, "JSON")


# --- record-level failures ---


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({"_base64": ""}, "Error Loading Image: _base64 is empty"),
        ({"_base64": "   \n "}, "Error Loading Image: _base64 is empty"),
        ({"_base64": "data:image/png;base64,"}, "Error Loading Image: _base64 is empty"),
        ({"_base64": "!!!not base64!!!"}, "Error Loading Image: _base64 is not valid base64"),
        ({"_base64": 12345}, "Error Loading Image: _base64 must be a string"),
        ({"_url": 12345}, "Error Loading Image: _url must be a string"),
        ({"name": "no image"}, "Error Loading Image: the record has no _url or _base64"),
        ({}, "Error Loading Image: the record has no _url or _base64"),
        ({"_url": ""}, "Error Loading Image: the record has no _url or _base64"),
        ({"_base64": GOOD_B64, "_id": True}, "_id must be a string or a number"),
        ({"_base64": GOOD_B64, "_id": {"a": 1}}, "_id must be a string or a number"),
        ({"_url": "file:///etc/passwd"}, "Error Loading Image: URL scheme must be http or https"),
        ({"_url": "ftp://example.com/a.png"}, "Error Loading Image: URL scheme must be http or https"),
        ({"_url": "not a url"}, "Error Loading Image: URL scheme must be http or https"),
    ],
)
def test_bad_record(env: Env, method: str, record: dict[str, Any], text: str) -> None:
    out = one_record_status(env.client, record, method)
    assert out["_status"]["text"] == text


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("content", [b"hello world, not an image", b"\x89PNG\r\n\x1a\n truncated", b"\0" * 100])
def test_non_image_bytes(env: Env, method: str, content: bytes) -> None:
    out = one_record_status(env.client, {"_base64": base64.b64encode(content).decode()}, method)
    text = out["_status"]["text"]
    assert text.startswith("Error Loading Image: "), text
    assert "image" in text.removeprefix("Error Loading Image: ")


def test_non_image_url(env: Env) -> None:
    out = one_record_status(env.client, {"_url": env.images.url("/text.txt")})
    assert out["_status"]["text"].startswith("Error Loading Image: cannot identify image")


def test_decompression_bomb(env: Env) -> None:
    bomb = bomb_png()
    assert len(bomb) < 200
    assert struct.unpack(">II", bomb[16:24]) == (50_000, 50_000)  # the IHDR really claims 50000x50000
    out = one_record_status(env.client, {"_base64": base64.b64encode(bomb).decode(), "_id": "bomb"})
    text = out["_status"]["text"]
    assert text.startswith("Error Loading Image: image too large"), text
    assert "2500000000" in text
    assert out["_id"] == "bomb"


@pytest.mark.parametrize("method", METHODS)
def test_file_record_asks_for_base64(env: Env, method: str) -> None:
    out = one_record_status(env.client, {"_file": "/etc/passwd"}, method)
    text = out["_status"]["text"]
    assert text.startswith("Error Loading Image: ") and "_base64" in text and "_file" in text
    assert "root:" not in text


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("record", ["http://example.com/a.png", 5, None, ["_base64", GOOD_B64], True])
def test_record_not_an_object(env: Env, method: str, record: Any) -> None:
    out = one_record_status(env.client, record, method)
    assert out["_status"]["text"] == "record must be a JSON object"


def test_mixed_good_and_bad_records_visual_hash(env: Env) -> None:
    records = [{"_base64": GOOD_B64, "_id": "good"}, {"_base64": "", "_id": "bad"}, "junk"]
    http, body = call(env.client, "visual_hash", {"records": records})
    assert http == 200
    assert body["status"]["code"] == 300 and body["status"]["text"] == "MIXED_RESULT"
    good, bad, junk = body["records"]
    expected = hash_image(GOOD)
    assert good["_status"]["code"] == 200 and good["bmh1"] == expected.hashes["bmh1"].to_string()
    assert bad["_status"]["code"] == 400 and bad["_id"] == "bad" and "bmh1" not in bad
    assert junk["_status"] == {
        "code": 400,
        "text": "record must be a JSON object",
        "request_id": body["status"]["request_id"],
    }


def test_mixed_records_remove_duplicates_keep_failed_in_place(env: Env) -> None:
    records = [{"_base64": GOOD_B64, "_id": "1"}, {"_file": "x.png", "_id": "2"}, {"_base64": GOOD_B64, "_id": "3"}]
    http, body = call(env.client, "remove_duplicates", {"records": records})
    assert http == 200 and body["status"]["code"] == 300 and body["status"]["text"] == "MIXED_RESULT"
    first, failed = body["records"]
    assert first["_id"] == "1" and [r["_id"] for r in first["removed_records"]] == ["3"]
    assert failed["_id"] == "2" and failed["_status"]["code"] == 400 and "removed_records" not in failed


def test_mixed_records_rank_images(env: Env) -> None:
    records = [{"_base64": GOOD_B64, "_id": "1"}, {"_base64": "@@", "_id": "2"}]
    http, body = call(env.client, "rank_images", {"query_record": {"_base64": GOOD_B64}, "records": records})
    assert http == 200 and body["status"]["code"] == 300 and body["status"]["text"] == "MIXED_RESULT"
    assert [r["_id"] for r in body["answer_records"]] == ["1"] and body["answer_distances"] == [0.0]
    assert [r["_id"] for r in body["skipped_records"]] == ["2"]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"_base64": ""}, "_base64 is empty"),
        ({"_file": "q.png"}, "_base64"),
        ({}, "no _url or _base64"),
        ({"_url": "http://10.1.2.3/q.jpg"}, "URL not allowed"),
    ],
)
def test_rank_images_query_failure(env: Env, query: dict[str, Any], fragment: str) -> None:
    body = {"query_record": query, "records": [{"_base64": GOOD_B64}]}
    http, out = call(env.client, "rank_images", body)
    text = check_error(http, out, 400, "Query record failed", fragment)
    assert text.startswith("Query record failed: Error Loading Image: ")
    (echoed,) = out["query_records"]
    assert echoed["_status"]["code"] == 400 and fragment in echoed["_status"]["text"]
    assert "_id" not in echoed
    assert "answer_records" not in out


def test_rank_images_every_record_failed(env: Env) -> None:
    body = {"query_record": {"_base64": GOOD_B64}, "records": [{"_base64": ""}, {"_file": "a.png"}]}
    http, out = call(env.client, "rank_images", body)
    check_error(http, out, 400, ALL_FAILED)
    assert out["answer_records"] == [] and len(out["skipped_records"]) == 2


# --- SSRF through the API ---


def test_guarded_fetcher_is_in_use(env: Env) -> None:
    """The harness itself: a good URL and a redirect on the image server load through the test's backend."""
    before = len(env.guard.connects)
    records = [{"_url": env.images.url("/good.png")}, {"_url": env.images.url("/to-good")}]
    records.append({"_url": f"http://images.example.test:{env.images.port}/good.png"})
    http, body = call(env.client, "visual_hash", {"records": records})
    assert http == 200 and body["status"]["code"] == 200, body
    assert all(r["bmh1"] == hash_image(GOOD).hashes["bmh1"].to_string() for r in body["records"])
    assert env.guard.connects[before:] and set(env.guard.connects[before:]) == {("127.0.0.1", env.images.port)}


SSRF_CASES = [
    ("http://127.0.0.1:{closed}/a.png", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1/a.png", "127.0.0.1 is a loopback address"),
    ("http://[::1]:{allowed}/good.png", "::1 is a loopback address"),
    ("http://[::1]:{closed}/", "::1 is a loopback address"),
    ("http://10.1.2.3/x.jpg", "10.1.2.3 is a private address"),
    ("http://192.168.0.1:8080/x.jpg", "192.168.0.1 is a private address"),
    ("http://169.254.169.254/latest/meta-data", "169.254.169.254 is a cloud metadata address"),
    ("http://[::ffff:127.0.0.1]:{closed}/", "::ffff:127.0.0.1 is a loopback address"),
    ("http://[::ffff:10.1.2.3]/", "::ffff:10.1.2.3 is a private address"),
    ("http://[::ffff:169.254.169.254]/", "::ffff:169.254.169.254 is a cloud metadata address"),
    ("http://0.0.0.0:{allowed}/good.png", "0.0.0.0 is an unspecified address"),
    ("http://internal.example.test/x.png", "internal.example.test resolves to a loopback address"),
    ("http://internal.example.test:{closed}/x.png", "internal.example.test resolves to a loopback address"),
    ("http://mixed.example.test/x.png", "mixed.example.test resolves to a private address"),
    ("http://metadata.example.test/", "metadata.example.test resolves to a cloud metadata address"),
    ("http://v6.example.test/", "v6.example.test resolves to a loopback address"),
    ("{base}/to-closed-port", "127.0.0.1 is a loopback address"),
    ("{base}/to-ipv6-loopback", "::1 is a loopback address"),
    ("{base}/to-metadata", "169.254.169.254 is a cloud metadata address"),
    ("{base}/to-private", "10.1.2.3 is a private address"),
    ("{base}/to-loopback-name", "internal.example.test resolves to a loopback address"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("template", "reason"), SSRF_CASES)
def test_ssrf_refused(env: Env, method: str, template: str, reason: str) -> None:
    url = template.format(closed=env.closed_port, allowed=env.images.port, base=env.images.base_url)
    before = len(env.guard.connects)
    path = url.removeprefix(env.images.base_url)
    hits = env.images.hits[path]
    out = one_record_status(env.client, {"_url": url, "_id": "x"}, method)
    assert out["_status"]["text"] == f"Error Loading Image: URL not allowed: {reason}"
    assert out["_url"] == url
    # No connection but to the allowed image server (pooled connections may be reused, so maybe none at all)...
    assert set(env.guard.connects[before:]) <= {("127.0.0.1", env.images.port)}
    # ... which the redirect cases asked exactly once: a refusal is final, not retried.
    if template.startswith("{base}"):
        assert env.images.hits[path] == hits + 1
