"""The examples work as written against a real ``matchdb serve``: every ```bash block of README.md and docs/*.md
(the convention: ```bash marks a block a reader can paste; other fences are illustrations), each page's blocks in
order in one shell, like a newcomer pasting them; docs/api.md's replies are checked in detail."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import matchdb_env, run_matchdb_server

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(doc: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / doc).read_text(), flags=re.S)


RUNNABLE = [
    str(p.relative_to(ROOT))
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if bash_blocks(str(p.relative_to(ROOT)))
]


#: The token of a reader who followed README.md (which creates one, closing open mode): docs/*.md run with it.
READER_TOKEN = "mdb_docs-reader-token-0123456789abcdef"

#: Prepended to every page's script: any curl that gets an HTTP error fails the page, whatever flags the page gave
#: it (``curl -s`` alone exits 0 on a 401, so a page that forgot the token would look fine).
CURL_FAILS = 'curl() { command curl --fail-with-body "$@"; }\n'

#: Prepended to the Python examples: a call answered with an HTTP error or an error ``status`` stops the script.
#: Ximilar's client returns error answers without raising, so without this a 401 on every call still exits 0.
PYTHON_CALLS_FAIL = """
import requests as _requests

_send = _requests.Session.send


def _send_or_fail(self, request, **kwargs):
    response = _send(self, request, **kwargs)
    code = response.status_code
    if code < 400 and "json" in response.headers.get("content-type", ""):
        status = response.json().get("status") if response.content else None
        code = status.get("code", code) if isinstance(status, dict) else code
    if code >= 400:
        raise SystemExit(f"{request.method} {request.url} answered {code}: {response.text[:500]}")
    return response


_requests.Session.send = _send_or_fail
"""


def run_page(doc: str, script: str, base_url: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``script`` (the page's blocks) in bash with ``set -euo pipefail``, against ``base_url``."""
    script = "set -euo pipefail\n" + CURL_FAILS + script
    script = script.replace("http://127.0.0.1:8000", base_url).replace(
        ".venv/bin/matchdb", f"{sys.executable} -m matchdb"
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("doc", RUNNABLE)
def test_runnable_blocks_succeed_when_pasted_in_order(doc: str, tmp_path: Path) -> None:
    """A fresh user: empty data folder, no MATCHDB_* settings, the server on the per-user default database; the
    ``.venv/bin/matchdb`` of the page is this interpreter's matchdb, and port 8000 the test server's. README.md
    starts in open mode and closes it; docs/*.md are read after it, so a token exists and ``$TOKEN`` holds it."""
    home = tmp_path / "home"
    env = {"XDG_DATA_HOME": str(home / ".local" / "share"), "HOME": str(home), "MATCHDB_DATABASE_URL": ""}
    server_env = dict(env)
    if doc != "README.md":
        server_env["MATCHDB_BOOTSTRAP_TOKEN"] = env["TOKEN"] = READER_TOKEN
    with run_matchdb_server(server_env) as base_url:
        result = run_page(doc, "\n".join(bash_blocks(doc)), base_url, matchdb_env(env))
    assert result.returncode == 0, f"{doc}: exit {result.returncode}\n{result.stderr[-2000:]}\n{result.stdout[-2000:]}"
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_a_call_that_fails_fails_the_page(tmp_path: Path) -> None:
    """The check above is worth something only if a refused call fails the page: a curl without the token."""
    with run_matchdb_server({"MATCHDB_BOOTSTRAP_TOKEN": READER_TOKEN}) as base_url:
        result = run_page("-", "curl -s -X POST http://127.0.0.1:8000/v2/ping\n", base_url, matchdb_env({}))
    assert result.returncode != 0 and "401" in result.stderr + result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_api_doc_examples_run_against_a_real_server() -> None:
    blocks = bash_blocks("docs/api.md")
    assert len(blocks) >= 4
    with run_matchdb_server({"MATCHDB_BOOTSTRAP_TOKEN": READER_TOKEN}) as base_url:
        # Each curl prints one JSON reply; run them in order and read the replies back.
        result = run_page("docs/api.md", "\n".join(blocks), base_url, matchdb_env({"TOKEN": READER_TOKEN}))
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in re.split(r"(?<=\})(?=\{)", result.stdout.strip())]
    assert [reply["status"]["code"] for reply in replies] == [200] * len(replies)
    assert replies[0]["_service_info"]["_name"] == "Image matching service"
    assert replies[1]["records"][0]["_id"] == "1" and len(replies[1]["records"][0]["phash"]) == 64
    assert [r["_id"] for r in replies[2]["records"][0]["removed_records"]] == ["3"]
    assert replies[3]["answer_distances"][0] == 0.0 and replies[3]["answer_records"][0]["sku"] == 7


def ximilar_client_example(token: str, base_url: str, strict: bool = True) -> subprocess.CompletedProcess[str]:
    """docs/ximilar-client.md's example, as written, with ``TOKEN`` in the environment (``strict``: every call
    that answers an error stops it, see :data:`PYTHON_CALLS_FAIL`)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "ximilar-client.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    script = (PYTHON_CALLS_FAIL if strict else "") + "\n".join(blocks).replace("http://127.0.0.1:8000", base_url)
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=matchdb_env({"TOKEN": token}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ximilar_client_doc_example_runs_against_a_real_server() -> None:
    """With Ximilar's real client (only the base URL changed), as a reader who has a token; with a wrong token the
    script fails loudly instead of quietly getting 401s."""
    with run_matchdb_server({"MATCHDB_BOOTSTRAP_TOKEN": READER_TOKEN}) as base_url:
        wrong = ximilar_client_example("mdb_not-a-real-token-0123456789", base_url, strict=False)
        # the page's own check_json_status(ping) raises: no quiet run of 401s
        assert wrong.returncode != 0 and "Invalid or revoked API token" in wrong.stderr, wrong.stderr
        result = ximilar_client_example(READER_TOKEN, base_url)
        assert result.returncode == 0, result.stderr
        headers = {"collection-id": "shop", "Authorization": f"Token {READER_TOKEN}"}
        listed = httpx.post(f"{base_url}/v2/allRecords", json={}, headers=headers).json()
    assert listed["answer_records"] == [
        {"_id": "a", "category": "people", "price": 10, "_width": 128, "_height": 128},
        {"_id": "b", "category": "cats", "price": 9, "_width": 150, "_height": 100},
    ]
