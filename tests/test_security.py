"""The hostile caller (issue 25), on real ``matchdb serve`` processes: each attack of docs/security.md, and what held.

Two servers: one open (no token, on 127.0.0.1), one with tokens of two workspaces and a metrics token, bound to
every interface as docker-compose runs it (still reached through 127.0.0.1 only). The browser attack (a page of
another origin posting to the open service) runs in headless Chromium when MATCHDB_TEST_CHROMIUM is set.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from matchdb.cli.serve import allowed_hosts
from tests.imagegen import encode, photo_like
from tests.servers import image_server, matchdb_server
from tests.test_auth import create_token

METRICS_TOKEN = "metrics-" + "m" * 40
BOOTSTRAP = "bootstrap-" + "b" * 40
EVIL = "http://evil.example"


def png(seed: int) -> str:
    return base64.b64encode(encode(Image.fromarray(photo_like(48, 40, seed)), "PNG")).decode()


@dataclass(frozen=True)
class Secured:
    url: str
    a: dict[str, str]  # headers of workspace A's token (the bootstrap token, workspace default)
    b: dict[str, str]  # workspace B's token
    b_read_only: dict[str, str]
    collection: str  # A's collection, with two records
    log_path: Path  # the server's output


@pytest.fixture(scope="module")
def open_url() -> Iterator[str]:
    with matchdb_server({}) as server:
        yield server.url


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    database = f"sqlite:///{tmp_path_factory.mktemp('secured') / 'db.sqlite3'}"
    b = create_token(database, "--workspace", "b")
    b_read_only = create_token(database, "--workspace", "b", "--read-only")
    env = {
        "MATCHDB_DATABASE_URL": database,
        "MATCHDB_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "MATCHDB_METRICS_TOKEN": METRICS_TOKEN,
    }
    with matchdb_server(env, host="0.0.0.0") as server:
        a = {"Authorization": f"Token {BOOTSTRAP}"}
        created = httpx.post(f"{server.url}/v2/collections", json={"name": "shoes"}, headers=a).json()
        records = [{"_id": "same", "_base64": png(1)}, {"_id": "other", "_base64": png(2)}]
        inserted = httpx.post(
            f"{server.url}/v2/insert",
            json={"records": records},
            headers={**a, "collection-id": created["id"]},
            timeout=60,
        )
        assert inserted.status_code == 200, inserted.text
        query = {"query_record": {"_id": "same"}, "k": 1}  # loads the collection's index (ping counts loaded ones)
        knn = httpx.post(f"{server.url}/v2/visualKNN", json=query, headers={**a, "collection-id": created["id"]})
        assert knn.status_code == 200, knn.text
        yield Secured(
            server.url,
            a,
            {"Authorization": f"Token {b.value}"},
            {"Authorization": f"Token {b_read_only.value}"},
            created["id"],
            server.log_path,
        )


# --- 4. tenant-private metadata ---------------------------------------------------------------------------------


def test_ping_counts_only_the_callers_collections(secured: Secured) -> None:
    own = httpx.post(f"{secured.url}/v2/ping", headers=secured.a).json()["indexes"]
    other = httpx.post(f"{secured.url}/v2/ping", headers=secured.b).json()["indexes"]
    assert own["ready"] == 1 and own["records"] == 2
    assert other == {"loading": 0, "ready": 0, "records": 0}


def _metrics(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{url}/metrics", headers=headers or {})


def test_per_collection_metrics_only_for_the_metrics_token(secured: Secured) -> None:
    operator = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    deadline = time.monotonic() + 60  # the gauges follow a heartbeat (every 2 s): wait for them, generously
    while secured.collection not in _metrics(secured.url, operator).text and time.monotonic() < deadline:
        time.sleep(0.2)
    assert 'matchdb_index_records{collection="' + secured.collection in _metrics(secured.url, operator).text
    for headers in (None, secured.a, secured.b, {"Authorization": "Bearer wrong"}):
        answer = _metrics(secured.url, headers)
        assert answer.status_code == 200
        assert "matchdb_requests_total" in answer.text  # process-wide metrics stay
        assert secured.collection not in answer.text and "matchdb_index_records" not in answer.text


def test_the_metrics_token_is_no_api_token(secured: Secured) -> None:
    answer = httpx.post(f"{secured.url}/v2/ping", headers={"Authorization": f"Token {METRICS_TOKEN}"})
    assert answer.status_code == 401


# --- 5. browser safety --------------------------------------------------------------------------------------------


def _collection_names(url: str, headers: dict[str, str] | None = None) -> list[str]:
    return [c["name"] for c in httpx.get(f"{url}/v2/collections", headers=headers or {}).json()["collections"]]


def test_open_mode_refuses_a_text_plain_write(open_url: str) -> None:
    answer = httpx.post(
        f"{open_url}/v2/collections", content=b'{"name": "csrf"}', headers={"Content-Type": "text/plain"}
    )
    assert answer.status_code == 415 and answer.json()["status"]["code"] == 415
    no_type = httpx.post(f"{open_url}/v2/collections", content=b'{"name": "csrf"}')
    assert no_type.status_code == 415
    assert "csrf" not in _collection_names(open_url)


def test_open_mode_refuses_another_sites_origin(open_url: str) -> None:
    answer = httpx.post(f"{open_url}/v2/collections", json={"name": "evil"}, headers={"Origin": EVIL})
    assert answer.status_code == 403
    created = httpx.post(f"{open_url}/v2/collections", json={"name": "own"}, headers={"Origin": open_url}).json()
    deleted = httpx.delete(f"{open_url}/v2/collections/{created['id']}", headers={"Origin": EVIL})
    assert deleted.status_code == 403
    assert "evil" not in _collection_names(open_url) and "own" in _collection_names(open_url)


def test_with_tokens_the_content_type_is_not_required(secured: Secured) -> None:
    answer = httpx.post(f"{secured.url}/v2/ping", content=b"{}", headers={**secured.a, "Content-Type": "text/plain"})
    assert answer.status_code == 200


def test_open_mode_answers_only_loopback_host_names(open_url: str) -> None:
    port = open_url.rsplit(":", 1)[1]
    refused = httpx.post(f"{open_url}/v2/ping", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and refused.json()["status"]["code"] == 400  # in the envelope
    assert "MATCHDB_ALLOWED_HOSTS" in refused.json()["status"]["text"]
    assert (
        httpx.post(f"{open_url}/v2/collections", json={"name": "rebound"}, headers={"Host": "evil.example"}).status_code
        == 400
    )
    for name in ("localhost", "127.0.0.1", "[::1]"):
        assert httpx.post(f"{open_url}/v2/ping", headers={"Host": f"{name}:{port}"}).status_code == 200, name


def test_a_server_with_tokens_on_every_interface_answers_any_host_name(secured: Secured) -> None:
    """As docker-compose runs it behind a proxy (docs/security.md: set MATCHDB_ALLOWED_HOSTS there)."""
    answer = httpx.post(f"{secured.url}/v2/ping", headers={**secured.a, "Host": "matchdb.internal"})
    assert answer.status_code == 200


def test_thumbnails_are_never_stored_by_a_browser(secured: Secured) -> None:
    headers = {**secured.a, "collection-id": secured.collection}
    answer = httpx.get(f"{secured.url}/v2/thumbnail", params={"_id": "same"}, headers=headers)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert answer.headers["cache-control"] == "no-store"
    assert "vary" not in answer.headers or "authorization" in answer.headers["vary"].lower()


@pytest.mark.parametrize("path", ["/docs", "/"])
def test_docs_and_console_cannot_be_framed_or_sniffed(open_url: str, path: str) -> None:
    answer = httpx.get(f"{open_url}{path}")
    assert answer.status_code == 200
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_every_answer_says_nosniff(open_url: str) -> None:
    for answer in (
        httpx.post(f"{open_url}/v2/ping"),
        httpx.get(f"{open_url}/v2/nothing"),
        httpx.get(f"{open_url}/metrics"),
    ):
        assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/console/app.js%00.css", "/console/%00", "/v2/ping%00", "/docs/static/%00", "/console/%ZZ", "/console/%C3%28"],
)
def test_an_invalid_path_is_a_404_in_the_envelope(open_url: str, path: str) -> None:
    answer = httpx.get(open_url + path)
    assert answer.status_code == 404
    assert answer.json()["status"]["code"] == 404


def test_a_collection_id_with_a_nul_is_a_404(secured: Secured) -> None:
    answer = httpx.delete(f"{secured.url}/v2/collections/%00", headers=secured.a)
    assert answer.status_code == 404


# --- what held -----------------------------------------------------------------------------------------------------


def test_another_workspaces_collection_is_unknown(secured: Secured) -> None:
    foreign = httpx.post(
        f"{secured.url}/v2/get",
        json={"records": [{"_id": "same"}]},
        headers={**secured.b, "collection-id": secured.collection},
    )
    unknown = httpx.post(
        f"{secured.url}/v2/get", json={"records": [{"_id": "same"}]}, headers={**secured.b, "collection-id": "no-such"}
    )
    assert foreign.status_code == unknown.status_code == 404
    same = foreign.json()["status"]["text"].replace(secured.collection, "?")
    assert same == unknown.json()["status"]["text"].replace("no-such", "?")
    assert "shoes" not in _collection_names(secured.url, secured.b)


def test_a_read_only_token_is_refused_every_write(secured: Secured) -> None:
    created = httpx.post(f"{secured.url}/v2/collections", json={"name": "b-own"}, headers=secured.b).json()
    headers = {**secured.b_read_only, "collection-id": created["id"]}
    writes = [
        httpx.post(f"{secured.url}/v2/collections", json={"name": "x"}, headers=headers),
        httpx.delete(f"{secured.url}/v2/collections/{created['id']}", headers=headers),
        httpx.post(f"{secured.url}/v2/insert", json={"records": [{"_id": "1", "_base64": png(3)}]}, headers=headers),
        httpx.post(f"{secured.url}/v2/update", json={"records": [{"_id": "1", "a": 1}]}, headers=headers),
        httpx.post(f"{secured.url}/v2/delete", json={"records": [{"_id": "1"}]}, headers=headers),
    ]
    assert [answer.status_code for answer in writes] == [403] * 5


def test_no_token_in_the_server_log(secured: Secured) -> None:
    log = secured.log_path.read_text(errors="replace")
    assert "matchdb.access" in log
    for headers in (secured.a, secured.b, secured.b_read_only):
        assert headers["Authorization"].split()[1] not in log
    assert METRICS_TOKEN not in log


# --- the browser attack ------------------------------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><html><body><script>
fetch("{target}/v2/collections", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{name: "from-a-page"}})}}).finally(() => {{ document.body.dataset.done = "1"; }});
</script></body></html>"""


def test_a_page_of_another_origin_cannot_write_to_the_open_service(open_url: str, tmp_path: Path) -> None:
    chromium = os.environ.get("MATCHDB_TEST_CHROMIUM")
    if not chromium:
        pytest.skip("MATCHDB_TEST_CHROMIUM is not set (point it at a headless Chromium to run this test)")
    page = ATTACK_PAGE.format(target=open_url).encode()
    with image_server({"/attack.html": page}) as site:
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}"]
        command += ["--virtual-time-budget=5000", "--dump-dom", site.url("/attack.html")]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False).stdout
        assert site.hits["/attack.html"] == 1
    assert 'data-done="1"' in dom, dom  # the page did send its request
    assert "from-a-page" not in _collection_names(open_url)


def test_the_default_host_list() -> None:
    loopback = ("localhost", "127.0.0.1", "::1", "[::1]")
    assert allowed_hosts((), "127.0.0.1", tokens_exist=True) == loopback
    assert allowed_hosts((), "0.0.0.0", tokens_exist=False) == loopback  # --insecure-open
    assert allowed_hosts((), "0.0.0.0", tokens_exist=True) == ("*",)
    assert allowed_hosts(("api.example",), "0.0.0.0", tokens_exist=True) == ("api.example",)
