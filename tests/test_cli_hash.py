"""`matchdb hash` run as a real subprocess: JSON lines, per-file errors, exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from matchdb.hashing import hash_image
from tests.imagegen import encode, photo_like

DATA = Path(__file__).parent / "data"


def run_hash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchdb", "hash", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_prints_one_json_line_per_file(tmp_path: Path) -> None:
    second = tmp_path / "second.png"
    second.write_bytes(encode(Image.fromarray(photo_like(90, 60, 5)), "PNG"))
    result = run_hash(str(DATA / "astronaut-128.jpg"), str(second))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(DATA / "astronaut-128.jpg"), str(second)]
    expected = hash_image(second.read_bytes())
    assert lines[1] == {
        "file": str(second),
        "_width": 90,
        "_height": 60,
        "bmh1": expected.hashes["bmh1"].to_string(),
        "phash": expected.hashes["phash"].to_string(),
    }
    assert len(lines[0]["bmh1"]) == 968 and len(lines[0]["phash"]) == 64


def test_one_hash_type(tmp_path: Path) -> None:
    result = run_hash("--hash-type", "phash", str(DATA / "chelsea-150x100.png"))
    assert result.returncode == 0
    line = json.loads(result.stdout)
    assert set(line) == {"file", "_width", "_height", "phash"}


def test_failures_are_reported_per_file_and_set_the_exit_status(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    result = run_hash(str(broken), str(DATA / "chelsea-150x100.png"), str(missing))
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert "cannot identify image" in lines[0]["error"]
    assert lines[1]["_width"] == 150
    assert lines[2]["error"] == "No such file or directory"
    assert "2 of 3 files failed" in result.stderr


def test_max_pixels_setting_applies(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "matchdb", "hash", str(DATA / "chelsea-150x100.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"MATCHDB_MAX_PIXELS": "1000", "PATH": ""},
    )
    assert result.returncode == 1
    assert "image too large: 15000 pixels > limit 1000" in json.loads(result.stdout)["error"]
