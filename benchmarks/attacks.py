"""The attacks of issue 25 against a fresh ``matchdb serve``, one line each: what the server answered.

    .venv/bin/python benchmarks/attacks.py
    PYTHONPATH=/path/to/an/older/checkout .venv/bin/python benchmarks/attacks.py   # the same against older code

Two servers on 127.0.0.1 over temporary SQLite files: an open one, and one with tokens of workspaces ``default``
and ``b`` (bound to 127.0.0.1). docs/security.md has the figures before and after.
"""

from __future__ import annotations

import base64
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.imagegen import encode, photo_like  # noqa: E402
from tests.servers import matchdb_server, run_matchdb  # noqa: E402

TOKEN = "bootstrap-" + "b" * 40


def line(name: str, answer: httpx.Response, extra: str = "") -> None:
    print(f"{name:<62} {answer.status_code} {extra}".rstrip())


def open_attacks() -> None:
    with matchdb_server({}) as server:
        url = server.url
        text = httpx.post(f"{url}/v2/collections", content=b'{"name": "csrf"}', headers={"Content-Type": "text/plain"})
        line("open: text/plain POST /v2/collections", text)
        evil = httpx.post(f"{url}/v2/collections", json={"name": "evil"}, headers={"Origin": "http://evil.example"})
        line("open: JSON POST /v2/collections, Origin http://evil.example", evil)
        line("open: POST /v2/ping, Host: evil.example", httpx.post(f"{url}/v2/ping", headers={"Host": "evil.example"}))
        line("open: GET /console/app.js%00.css", httpx.get(f"{url}/console/app.js%00.css"))
        docs = httpx.get(f"{url}/docs")
        csp = docs.headers.get("content-security-policy", "")
        line("open: GET /docs", docs, f"frame-ancestors 'none': {'frame-ancestors' in csp}")


def secured_attacks() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        database = f"sqlite:///{Path(tmp) / 'db.sqlite3'}"
        made = run_matchdb(["token", "create", "--workspace", "b"], {"MATCHDB_DATABASE_URL": database})
        b = {"Authorization": f"Token {made.stdout.strip()}"}
        a = {"Authorization": f"Token {TOKEN}"}
        with matchdb_server({"MATCHDB_DATABASE_URL": database, "MATCHDB_BOOTSTRAP_TOKEN": TOKEN}) as server:
            url = server.url
            collection = httpx.post(f"{url}/v2/collections", json={"name": "shoes"}, headers=a).json()["id"]
            image = base64.b64encode(encode(Image.fromarray(photo_like(48, 40, 1)), "PNG")).decode()
            own = {**a, "collection-id": collection}
            httpx.post(f"{url}/v2/insert", json={"records": [{"_id": "1", "_base64": image}]}, headers=own, timeout=60)
            httpx.post(f"{url}/v2/visualKNN", json={"query_record": {"_id": "1"}}, headers=own, timeout=60)
            time.sleep(3)  # a heartbeat (2 s) sets the index gauges
            for name, headers in (("anonymous", {}), ("workspace b's token", b)):
                answer = httpx.get(f"{url}/metrics", headers=headers)
                line(f"tokens: GET /metrics, {name}", answer, f"shows A's collection: {collection in answer.text}")
            ping = httpx.post(f"{url}/v2/ping", headers=b)
            line("tokens: POST /v2/ping as workspace b", ping, f"indexes: {ping.json().get('indexes')}")
            thumb = httpx.get(f"{url}/v2/thumbnail", params={"_id": "1"}, headers=own)
            line("tokens: GET /v2/thumbnail?_id=1", thumb, f"Cache-Control: {thumb.headers.get('cache-control')}")
            foreign = httpx.post(
                f"{url}/v2/get", json={"records": [{"_id": "1"}]}, headers={**b, "collection-id": collection}
            )
            line("held: workspace b reads A's collection", foreign)


if __name__ == "__main__":
    open_attacks()
    secured_attacks()
