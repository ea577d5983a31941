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


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("doc", RUNNABLE)
def test_runnable_blocks_succeed_when_pasted_in_order(doc: str, tmp_path: Path) -> None:
    """A fresh user: empty data folder, no MATCHDB_* settings, the server on the per-user default database; the
    ``.venv/bin/matchdb`` of the page is this interpreter's matchdb, and port 8000 the test server's."""
    home = tmp_path / "home"
    env = {"XDG_DATA_HOME": str(home / ".local" / "share"), "HOME": str(home), "MATCHDB_DATABASE_URL": ""}
    with run_matchdb_server(env) as base_url:
        script = "set -euo pipefail\n" + "\n".join(bash_blocks(doc))
        script = script.replace("http://127.0.0.1:8000", base_url).replace(
            ".venv/bin/matchdb", f"{sys.executable} -m matchdb"
        )
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=matchdb_env(env),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert result.returncode == 0, f"{doc}: exit {result.returncode}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_api_doc_examples_run_against_a_real_server() -> None:
    blocks = bash_blocks("docs/api.md")
    assert len(blocks) >= 4
    with run_matchdb_server({}) as base_url:
        script = "set -euo pipefail\n" + "\n".join(blocks).replace("http://127.0.0.1:8000", base_url)
        # Each curl prints one JSON reply; run them in order and read the replies back.
        result = subprocess.run(
            ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in re.split(r"(?<=\})(?=\{)", result.stdout.strip())]
    assert [reply["status"]["code"] for reply in replies] == [200] * len(replies)
    assert replies[0]["_service_info"]["_name"] == "Image matching service"
    assert replies[1]["records"][0]["_id"] == "1" and len(replies[1]["records"][0]["phash"]) == 64
    assert [r["_id"] for r in replies[2]["records"][0]["removed_records"]] == ["3"]
    assert replies[3]["answer_distances"][0] == 0.0 and replies[3]["answer_records"][0]["sku"] == 7


def test_ximilar_client_doc_example_runs_against_a_real_server() -> None:
    """docs/ximilar-client.md's example, as written, with Ximilar's real client (only the base URL changed)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "ximilar-client.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    with run_matchdb_server({}) as base_url:
        script = "\n".join(blocks).replace("http://127.0.0.1:8000", base_url)
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        listed = httpx.post(f"{base_url}/v2/allRecords", json={}, headers={"collection-id": "shop"}).json()
    assert listed["answer_records"] == [
        {"_id": "a", "category": "people", "price": 10, "_width": 128, "_height": 128},
        {"_id": "b", "category": "cats", "price": 9, "_width": 150, "_height": 100},
    ]
