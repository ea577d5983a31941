"""No request ends without an answer (issue 14).

- The guard middleware on a small Starlette app served by a real uvicorn on 127.0.0.1: an exception in a handler
  is a 500 in the envelope whose request_id is the one logged with the traceback; the next request pipelined on
  the same connection is still answered (uvicorn used to cut the connection after an escaped exception, dropping
  it); a streamed body that fails before its first chunk is a 500 too, one that fails later is cut short (never
  mistaken for a complete answer); a database that cannot be opened is a 503 with ``Retry-After``.
- Malformed bodies (and query strings) on every route of the real app, with every verb: never a 5xx, always the
  envelope.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine
from matchdb.web.app import create_app
from matchdb.web.guard import Guard
from tests.servers import LOOPBACK, free_port


def _tiny_app(tmp_path: Path) -> Starlette:
    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug in a handler")

    async def fails_at_once() -> AsyncIterator[bytes]:
        raise RuntimeError("a stream that fails before its first chunk")
        yield b""  # pragma: no cover (makes this a generator)

    async def fails_later() -> AsyncIterator[bytes]:
        yield b'{"answer_records": ['
        raise RuntimeError("a stream that fails half-way")

    async def stream_early(request: Request) -> Response:
        return StreamingResponse(fails_at_once(), media_type="application/json")

    async def stream_late(request: Request) -> Response:
        return StreamingResponse(fails_later(), media_type="application/json")

    async def database(request: Request) -> Response:
        blocker = tmp_path / "a-file-not-a-folder"
        blocker.write_text("")
        engine = make_engine(f"sqlite:///{blocker / 'db.sqlite3'}", timeout=0.5)  # cannot be opened
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return JSONResponse({})

    async def ok(request: Request) -> Response:
        return JSONResponse({"ok": True})

    routes = [
        Route("/boom", boom, methods=["POST"]),
        Route("/stream-early", stream_early),
        Route("/stream-late", stream_late),
        Route("/database", database),
        Route("/ok", ok),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, proc_id="test-proc")])


@contextlib.contextmanager
def served(app: Starlette) -> Iterator[str]:
    """``app`` on a real uvicorn server in a thread, on 127.0.0.1."""
    config = uvicorn.Config(app, host=LOOPBACK, port=free_port(), lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with served(_tiny_app(tmp_path)) as base:
        yield base


def _envelope(response: httpx.Response) -> dict[str, Any]:
    status: dict[str, Any] = response.json()["status"]
    assert status["code"] == response.status_code and status["proc_id"] == "test-proc", status
    return status


def test_a_bug_is_a_500_in_the_envelope_with_the_logged_request_id(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="matchdb"):
        response = httpx.post(f"{url}/boom", json={})
    assert response.status_code == 500
    status = _envelope(response)
    assert status["request_id"] in status["text"]
    logged = [r for r in caplog.records if status["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "a bug in a handler" in str(logged[0].exc_info[1])


def _pipelined(url: str, requests: list[bytes]) -> bytes:
    """Send ``requests`` back to back on one connection and read until the server closes it (or 10 s pass)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(requests))
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
    return received


def test_the_request_after_a_failed_one_on_the_same_connection_is_answered(url: str) -> None:
    failing = b"POST /boom HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    fine = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    received = _pipelined(url, [failing, fine])
    assert received.count(b"HTTP/1.1 ") == 2, received
    assert received.startswith(b"HTTP/1.1 500 ") and b"HTTP/1.1 200 OK" in received and b'{"ok":true}' in received


def test_a_stream_that_fails_before_its_first_chunk_is_a_500(url: str) -> None:
    response = httpx.get(f"{url}/stream-early")
    assert response.status_code == 500
    assert "Internal server error" in _envelope(response)["text"]


def test_a_stream_that_fails_half_way_is_cut_short_not_passed_off_as_complete(url: str) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{url}/stream-late")
    assert httpx.get(f"{url}/ok").status_code == 200  # the server carries on


def test_a_database_that_cannot_be_reached_is_a_503_with_retry_after(url: str) -> None:
    response = httpx.get(f"{url}/database")
    assert response.status_code == 503
    assert "unavailable" in _envelope(response)["text"]
    assert response.headers["retry-after"].isdigit()


# --- malformed requests on every route of the real app --------------------------------------------------------

BAD_BODIES: list[bytes] = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"42",
    b'"records"',
    b"\xff\xfe\x00garbage",
    b'{"records": 5, "query_record": 5, "name": 5, "page": "x", "page_size": 1e9}',
    b'{"records": [1, "x", null, [], {}], "query_record": []}',
    b'{"records": [{"_id": {"a": 1}, "_base64": 12}], "query_record": {"_id": []}}',
    b'{"records": [{"_base64": "!!not base64!!"}], "query_record": {"_base64": "AAAA"}}',
    b'{"records": [{"_url": "http://127.0.0.1:1/x.png"}], "query_record": {"_url": "ftp://x"}}',
    b'{"k": -1, "radius": "far", "range": 1e400, "hash_type": ["md5"], "dihedral": "yes"}',
    b'{"filter": [1], "fields_to_return": 3, "count": -5, "size": "x", "query_record": {"_id": "a"}}',
    b'{"filter": {"a": {"$gt": 1}}, "query_record": {"_id": "a"}, "k": 99999999999999999999999}',
    b'{"records": [{"_id": "zz"}], "page": 0, "page_size": -1, "name": ""}',
    b'{"name": "' + b"n" * 500 + b'"}',
    b'{"records": NaN}',
    b"[" * 100_000,
    b'{"x": ' + b"9" * 5000 + b"}",
]
BAD_QUERY = "?size=abc&page=-99999999999999999999999"


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", hash_threads=1)
    from matchdb.storage.database import upgrade

    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_malformed_requests_on_every_route_and_verb_never_get_a_5xx(app_client: TestClient) -> None:
    collection = app_client.post("/v2/collections", json={"name": "target"}).json()["id"]
    app_client.post("/v2/insert", json={"records": [{"_id": "a", "_base64": _tiny_png()}]}, headers=_hdr(collection))
    answered = 0
    problems: list[str] = []
    for route_path, methods in _every_route(app_client.app.routes):  # type: ignore[attr-defined]
        path = route_path.replace("{collection_id}", "no-such-collection")
        for verb in [*sorted(methods - {"HEAD"}), "PUT"]:
            for body in BAD_BODIES:
                # with a real collection and a bad query string, then with neither header nor query string
                for query, headers in ((BAD_QUERY, _hdr(collection)), ("", {})):
                    response = app_client.request(verb, path + query, content=body, headers=headers)
                    answered += 1
                    problem = _problem(response)
                    if problem:
                        problems.append(f"{verb} {path}{query} {body[:60]!r} {headers}: {problem}")
    assert problems == [], f"{len(problems)} of {answered} malformed requests: {problems[:5]}"
    assert answered > 500
    stored = app_client.post("/v2/get", json={"records": [{"_id": "a"}]}, headers=_hdr(collection)).json()
    assert stored["status"]["code"] == 200  # and the good record survived it all


def _every_route(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, set[str]]]:
    """(path, methods) of every route, those mounted under a prefix (``/v2``, ``/image_matching/v2``) included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _every_route(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            yield prefix + route.path, set(route.methods or ())


def _hdr(collection: str) -> dict[str, str]:
    return {"collection-id": collection, "content-type": "application/json"}


def _problem(response: httpx.Response) -> str:
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if response.is_success and not response.url.path.startswith(("/v2/", "/image_matching/v2/")):
        return ""  # the operator's routes (/healthz, /metrics, /docs, /openapi.json) answer in their own formats
    try:
        status = response.json()["status"]
    except (ValueError, KeyError, TypeError):
        return f"not the envelope: {response.text[:200]}"
    expected = 200 if status.get("code") in (200, 300) else status.get("code")
    if expected != response.status_code or not status.get("request_id"):
        return f"HTTP {response.status_code} with envelope {json.dumps(status)[:200]}"
    return ""


def _tiny_png() -> str:
    import base64

    from PIL import Image

    from tests.imagegen import encode, photo_like

    return base64.b64encode(encode(Image.fromarray(photo_like(16, 12, seed=3)), "PNG")).decode()
