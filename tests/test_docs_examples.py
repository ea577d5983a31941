"""The curl examples of docs/api.md and docs/collections.md work as written against a real ``matchdb serve``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import run_matchdb_server

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(doc: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / doc).read_text(), flags=re.S)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_api_doc_examples_run_against_a_real_server() -> None:
    blocks = bash_blocks("api.md")
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
