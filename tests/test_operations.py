"""The operator's surface (issue 15): the OpenAPI document, /docs, /metrics, the access log, X-Request-ID.

- The document covers exactly the app's API routes (the ``/image_matching/v2`` mount counts as documented by
  ``/v2``; the operator's routes are excluded by name) and is valid OpenAPI 3.1 (openapi-spec-validator).
- Requests are counted in /metrics by method and status; under ``serve --workers 2`` every read of /metrics, on
  fresh connections (so either worker answers), sums both workers. ``MATCHDB_METRICS=token|off`` guard it.
- Each request's access log line carries the request_id its answer shows (text and JSON formats); a caller's
  valid ``X-Request-ID`` is that id, an invalid one is replaced.
- /docs renders in headless Chromium from the package's own files and lists every method.

The contract fuzzing (schemathesis against a real 2-worker server) is in tests/test_fuzz.py.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.tokens import ensure_token
from matchdb.web.app import create_app
from matchdb.web.guard import Guard
from matchdb.web.observe import JsonFormatter, Observer, labelled
from matchdb.web.openapi import ALIASES, PREFIX
from tests.imagegen import encode, photo_like
from tests.servers import RunningServer, matchdb_server

# Routes that are not API methods, hence not in the document (``include_in_schema=False``, or a mount of an app
# without routes, such as static files). A new one must be added here on purpose.
NOT_API = {
    "/healthz", "/metrics", "/openapi.json", "/docs", "/docs/static/{name}",
    # the web console (issue 16): pages and their assets, which call the API like any client
    "/", "/console/server.json", "/console/{name}",
}  # fmt: skip
VERBS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _tiny_png() -> str:
    return base64.b64encode(encode(Image.fromarray(photo_like(16, 12, seed=5)), "PNG")).decode()


def _client(tmp_path: Path, **settings: object) -> TestClient:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return TestClient(create_app(Settings(database_url=url, hash_threads=1, **settings)))  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path) as client:
        yield client


def _served(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str, bool]]:
    """(verb, path, included in the schema) of every route; mounts under an alias of /v2 are read as /v2."""
    for route in routes:
        if isinstance(route, Mount):
            mount = PREFIX if prefix + route.path in ALIASES else prefix + route.path
            if not route.routes:  # an app of its own (static files): never API, but it must be listed in NOT_API
                yield "GET", mount, False
            yield from _served(route.routes, mount)
        elif isinstance(route, Route):
            for verb in sorted((route.methods or set()) & VERBS):
                yield verb, prefix + route.path, route.include_in_schema
        else:
            raise AssertionError(f"unexpected route {route!r}")


def test_the_document_covers_every_api_route_and_only_those(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    served = set(_served(client.app.routes))  # type: ignore[attr-defined]
    excluded = {path for _, path, included in served if not included}
    assert excluded == NOT_API  # nothing is left out of the document unless listed there
    api = {(verb, path) for verb, path, included in served if included}
    documented = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    assert documented == api
    assert len(api) == 19  # 16 paths; ping, thumbnail and /v2/collections answer GET and POST
    assert all(path.startswith("/v2/") for _, path in api)


def test_the_document_is_valid_openapi_3_1_with_the_shared_parts(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    validate(document)  # raises on an invalid document
    assert document["openapi"] == "3.1.0"
    assert "/image_matching/v2/" in document["info"]["description"]
    components = document["components"]
    assert components["securitySchemes"]["token"] == {
        **components["securitySchemes"]["token"], "type": "apiKey", "in": "header", "name": "Authorization"
    }  # fmt: skip
    assert {"status", "statistics"} <= set(components["schemas"]["Envelope"]["required"])
    knn = document["paths"]["/v2/visualKNN"]["post"]
    assert {"$ref": "#/components/parameters/CollectionId"} in knn["parameters"]
    assert set(knn["responses"]) == {"200", "400", "401", "403", "404", "413", "415", "500", "503"}
    assert set(document["paths"]["/v2/insert"]["post"]["responses"]) >= {"403", "404"}
    records = components["schemas"]["VisualHashRequest"]["properties"]["records"]
    assert (records["minItems"], records["maxItems"]) == (1, 100)
    for path, item in document["paths"].items():
        for verb, operation in item.items():
            if verb == "post" and "requestBody" in operation:
                assert "example" in operation["requestBody"]["content"]["application/json"], path


def test_limits_in_the_document_are_the_servers(tmp_path: Path) -> None:
    with _client(tmp_path, max_records=7) as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["InsertRequest"]["properties"]["records"]["maxItems"] == 7


def test_the_documented_examples_are_answered_as_documented(client: TestClient) -> None:
    """Each stateless example, sent as is, succeeds (so the docs page's "try it out" works)."""
    document = client.get("/openapi.json").json()
    for name in ("visual_hash", "remove_duplicates", "rank_images"):
        example = document["paths"][f"/v2/{name}"]["post"]["requestBody"]["content"]["application/json"]["example"]
        answer = client.post(f"/v2/{name}", json=example).json()
        assert answer["status"]["code"] == 200, answer


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == f"{name}{{{wanted}}}" or (not labels and sample == name):
            return float(value)
    return 0.0


def test_metrics_count_requests_images_and_failures(client: TestClient) -> None:
    """In-process apps share the process's counters (other tests count too): compare before and after."""
    samples = [
        ("matchdb_requests_total", {"method": "visual_hash", "status": "200"}, 1),  # MIXED_RESULT is HTTP 200
        ("matchdb_requests_total", {"method": "visual_hash", "status": "400"}, 2),
        ("matchdb_requests_total", {"method": "unmatched", "status": "404"}, 1),
        ("matchdb_request_duration_seconds_count", {"method": "visual_hash"}, 3),
        ("matchdb_images_hashed_total", {"source": "base64"}, 2),
        ("matchdb_image_failures_total", {"stage": "decode"}, 1),
        ("matchdb_image_failures_total", {"stage": "download"}, 1),
        ("matchdb_download_failures_total", {"cause": "invalid_url"}, 1),
    ]
    before = client.get("/metrics").text
    image = {"_base64": _tiny_png()}
    client.post("/v2/visual_hash", json={"records": [image, image, {"_base64": "bm90IGFuIGltYWdl"}]})
    client.post("/v2/visual_hash", json={"records": [{"_url": "ftp://example.invalid/x.png"}]})
    client.post("/v2/visual_hash", json={"records": "nope"})
    client.post("/v2/nothing-here")
    after = client.get("/metrics").text
    grown = {(name, *labels.values()): _metric(after, name, **labels) - _metric(before, name, **labels)
             for name, labels, _ in samples}  # fmt: skip
    assert grown == {(name, *labels.values()): float(n) for name, labels, n in samples}


def test_metrics_need_a_token_when_configured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    token = "metrics-" + uuid.uuid4().hex
    with engine.begin() as connection:
        ensure_token(connection, token)
    engine.dispose()
    with TestClient(create_app(Settings(database_url=url, hash_threads=1, metrics="token"))) as client:
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["status"]["code"] == 401
        allowed = client.get("/metrics", headers={"Authorization": f"Token {token}"})
        assert allowed.status_code == 200 and "matchdb_requests_total" in allowed.text
    with TestClient(create_app(Settings(database_url=url, hash_threads=1, metrics="off"))) as client:
        assert client.get("/metrics").status_code == 404


def test_the_request_id_is_the_callers_when_valid_and_always_echoed(client: TestClient) -> None:
    mine = client.post("/v2/ping", headers={"X-Request-ID": "trace-42.a:b"})
    assert mine.headers["x-request-id"] == mine.json()["status"]["request_id"] == "trace-42.a:b"
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        answer = client.post("/v2/ping", headers={"X-Request-ID": bad})
        fresh = answer.json()["status"]["request_id"]
        assert fresh != bad and uuid.UUID(fresh) and answer.headers["x-request-id"] == fresh
    missing = client.post("/v2/no-such-method")  # an error answer carries it too
    assert missing.status_code == 404 and missing.headers["x-request-id"] == missing.json()["status"]["request_id"]


# --- real servers ---------------------------------------------------------------------------------------------------


def test_access_log_lines_carry_the_request_id_in_text_and_json(tmp_path: Path) -> None:
    with matchdb_server({}) as server:
        answer = httpx.post(f"{server.url}/v2/visual_hash", json={"records": [{"_base64": _tiny_png()}]})
        request_id = answer.json()["status"]["request_id"]
        line = _logged(server, request_id)
    assert "matchdb.access POST /v2/visual_hash 200 " in line
    assert f"request_id={request_id}" in line and "records=1" in line and "workspace=default" in line

    with matchdb_server({"MATCHDB_LOG_FORMAT": "json"}) as server:
        httpx.post(f"{server.url}/v2/get", json={"records": [{"_id": "x"}]}, headers={"collection-id": "nope"})
        answer = httpx.post(f"{server.url}/v2/ping", headers={"X-Request-ID": "my-trace-1"})
        assert answer.headers["x-request-id"] == "my-trace-1"
        _logged(server, "my-trace-1")
        _logged(server, '"operation": "get"')
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [entry for entry in entries if entry["logger"] == "matchdb.access"]
    ping = next(entry for entry in access if entry["request_id"] == "my-trace-1")
    assert (ping["method"], ping["path"], ping["operation"], ping["status"]) == ("POST", "/v2/ping", "ping", 200)
    assert ping["duration_ms"] > 0 and ping["time"].endswith("Z") and ping["workspace"] == "default"
    get = next(entry for entry in access if entry["operation"] == "get")
    assert (get["status"], get["collection"], get["records"]) == (404, "nope", 1)


def _logged(server: RunningServer, text: str, timeout: float = 10.0) -> str:
    """The server's first log line holding ``text``: the access line is written just after the answer's last
    byte is sent, so a client can read the answer a moment before the line is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in server.log().splitlines() if text in line]
        if found or time.monotonic() > deadline:
            assert found, f"{text!r} not in the log:\n{server.log()[-3000:]}"
            return found[0]
        time.sleep(0.05)


def test_every_read_of_metrics_sums_both_workers(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    body = {"records": [{"_base64": _tiny_png()}]}
    with matchdb_server({"TMPDIR": str(tmp)}, workers=2) as server:
        assert len(list(tmp.glob("matchdb-metrics-*"))) == 1  # serve's own folder for the workers' metrics
        answered_by = set()
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            answer = httpx.post(f"{server.url}/v2/visual_hash", json=body, headers={"Connection": "close"})
            assert answer.status_code == 200
            answered_by.add(answer.json()["status"]["proc_id"])
        reads = []
        for _ in range(10):  # requests and images are counted before the answer leaves: no wait needed
            text = httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}).text
            reads.append(_metric(text, "matchdb_requests_total", method="visual_hash", status="200"))
            assert _metric(text, "matchdb_images_hashed_total", source="base64") >= 20
        # the latency is observed once the answer is out, a moment after the client has it
        latencies = _metric(text, "matchdb_request_duration_seconds_count", method="visual_hash")
    assert reads == [20.0] * 10, reads
    assert 19 <= latencies <= 20
    assert len(answered_by) == 2, "both workers should have answered some of 20 fresh connections"
    assert list(tmp.glob("matchdb-metrics-*")) == []  # removed when the server stopped


@pytest.mark.chromium
def test_docs_page_renders_every_method_in_chromium(tmp_path: Path) -> None:
    browser = os.environ.get("MATCHDB_TEST_CHROMIUM")
    if not browser:
        pytest.skip("MATCHDB_TEST_CHROMIUM is not set (point it at a headless Chromium to run this test)")
    with matchdb_server({}) as server:
        document = httpx.get(f"{server.url}/openapi.json").json()
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
             "--virtual-time-budget=15000", "--dump-dom", f"{server.url}/docs"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    shown = set(re.findall(r'data-path="([^"]+)"', result.stdout))
    assert shown == set(document["paths"]), result.stdout[-2000:] + result.stderr[-2000:]
    assert "matchdb" in result.stdout and "Ximilar" in result.stdout


def test_a_bug_logs_its_traceback_with_the_request_id_and_an_access_line_with_the_500() -> None:
    """The observer wraps the guard: it logs the 500 the guard made of the exception, under the same id."""

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug in a handler")

    app = Starlette(
        routes=[Route("/boom", labelled(boom, "boom"), methods=["POST"])],
        middleware=[Middleware(Observer), Middleware(Guard, proc_id="test")],
    )
    app.state.proc_id = "test"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("matchdb")
    logger.addHandler(handler)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.post("/boom", headers={"X-Request-ID": "bug-report-7"})
    finally:
        logger.removeHandler(handler)
    assert answer.status_code == 500 and answer.json()["status"]["request_id"] == "bug-report-7"
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = next(entry for entry in entries if entry["level"] == "ERROR")
    assert error["request_id"] == "bug-report-7" and "RuntimeError: a bug in a handler" in error["traceback"]
    access = next(entry for entry in entries if entry["logger"] == "matchdb.access")
    assert (access["request_id"], access["status"], access["operation"]) == ("bug-report-7", 500, "boom")
