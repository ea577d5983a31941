"""`matchdb collection`, `matchdb ingest` and `matchdb query` run as real subprocesses against a fresh database, the
way an operator uses them: summaries, reruns that skip unchanged images, the failure report, the exit status."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from matchdb.storage import collections as collection_store
from matchdb.storage import records as record_store
from matchdb.storage.database import make_engine
from tests.conftest import fresh_postgres_database
from tests.imagegen import encode, photo_like

# The folder every ingest test starts from: 12 images at three depths, mixed formats and extension case, plus
# files that must be ignored (not an image extension, hidden).
FOLDER_IMAGES = {
    "a.png": 1,
    "b.jpg": 2,
    "C.JPG": 3,
    "d.webp": 4,
    "e.bmp": 5,
    "sub/f.png": 6,
    "sub/g.jpeg": 7,
    "sub/h.tif": 8,
    "sub/i.gif": 9,
    "sub/deeper/j.png": 10,
    "sub/deeper/k.png": 11,
    "sub/deeper/l.PNG": 12,
}
FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".gif": "GIF",
}


def image_bytes(seed: int, fmt: str = "PNG", **params: object) -> bytes:
    return encode(Image.fromarray(photo_like(96, 72, seed)), fmt, **params)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for name, seed in FOLDER_IMAGES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(seed, FORMATS[path.suffix.lower()]))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(image_bytes(99))
    return root


def run(database_url: str, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MATCHDB_DATABASE_URL": database_url, **env}
    return subprocess.run(
        [sys.executable, "-m", "matchdb", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=environment,
    )


def counts(result: subprocess.CompletedProcess[str]) -> tuple[int, int, int, int]:
    """(new, updated, unchanged, failed) from an ingest summary."""
    found = re.search(
        r"(\d+) new, (\d+) updated, (\d+) unchanged, (\d+) failed in [\d.]+ s \([\d.]+ images/s\)", result.stdout
    )
    assert found, (result.stdout, result.stderr)
    new, updated, unchanged, failed = (int(group) for group in found.groups())
    return new, updated, unchanged, failed


def stored(database_url: str, collection: str) -> dict[str, record_store.StoredRecord]:
    """Every record of the collection, by ``_id``, in insertion order."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            info = collection_store.find_collection(connection, None, collection)
            assert info is not None
            ids, _ = record_store.page_ext_ids(connection, info.id, 1, 1000)
            found = record_store.get_records(connection, info.id, ids)
            return {ext_id: found[ext_id] for ext_id in ids}
    finally:
        engine.dispose()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite3'}"


def test_ingest_a_folder_rerun_change_and_query(tmp_path: Path, folder: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    url = sqlite_url(tmp_path)

    first = run(url, "ingest", "--create", "--collection", "photos", "-j", "2", str(images), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert counts(first) == (12, 0, 0, 0)
    assert first.stdout.startswith("ingested 12 images: 12 new")
    assert not (tmp_path / "ingest-failures").exists()
    records = stored(url, "photos")
    assert list(records) == sorted(FOLDER_IMAGES)  # _id: the path relative to the folder, inserted in sorted order
    assert records["sub/h.tif"].width == 96 and records["sub/h.tif"].attributes == {}

    again = run(url, "ingest", "--collection", "photos", "-j", "2", str(images), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert counts(again) == (0, 0, 12, 0)

    (images / "sub/deeper/k.png").write_bytes(image_bytes(42))
    changed = run(url, "ingest", "--collection", "photos", "-j", "2", str(images), cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert counts(changed) == (0, 1, 11, 0)
    after = stored(url, "photos")
    assert after["sub/deeper/k.png"].row_id == records["sub/deeper/k.png"].row_id  # replaced in place
    assert after["sub/deeper/k.png"].bmh1 != records["sub/deeper/k.png"].bmh1

    query_file = tmp_path / "query.jpg"
    query_file.write_bytes(image_bytes(FOLDER_IMAGES["sub/g.jpeg"], "JPEG", quality=50))
    answer = run(url, "query", "--collection", "photos", "-k", "3", "--json", str(query_file))
    assert answer.returncode == 0, answer.stderr
    line = json.loads(answer.stdout)
    assert line["file"] == str(query_file)
    best = line["answers"][0]
    assert best["_id"] == "sub/g.jpeg" and best["distance"] < 5 and best["hamming"] < 50
    assert [a["distance"] for a in line["answers"]] == sorted(a["distance"] for a in line["answers"])

    table = run(url, "query", "--collection", "photos", "--hash-type", "phash", "-k", "2", str(query_file))
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert rows[0] == f"{query_file}:" and rows[1].split() == ["rank", "distance", "bits", "_id"]
    assert rows[2].split()[0] == "1" and rows[2].split()[-1] == "sub/g.jpeg" and len(rows) == 4


def test_query_dihedral_finds_mirrored_and_turned_copies(tmp_path: Path, folder: Path) -> None:
    url = sqlite_url(tmp_path)
    ingest = run(url, "ingest", "--create", "--collection", "photos", str(folder), cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    original = Image.fromarray(photo_like(96, 72, FOLDER_IMAGES["sub/f.png"]))
    for name, turned in (
        ("mirror.png", original.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        ("turned.png", original.transpose(Image.Transpose.ROTATE_90)),
    ):
        query_file = tmp_path / name
        query_file.write_bytes(encode(turned, "PNG"))
        plain = json.loads(run(url, "query", "--collection", "photos", "-k", "1", "--json", str(query_file)).stdout)
        found = run(url, "query", "--collection", "photos", "-k", "1", "--json", "--dihedral", str(query_file))
        assert found.returncode == 0, found.stderr
        best = json.loads(found.stdout)["answers"][0]
        assert best["_id"] == "sub/f.png" and best["hamming"] == 0
        assert plain["answers"][0]["hamming"] > 100  # without it, the turned copy is not near its original


def test_failures_go_to_the_report_and_the_rest_is_stored(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(image_bytes(1))
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (tmp_path / "manifest.csv").write_text(
        "_id,_file,price,note\nlisted,images/good.png,12,\n,images/missing.png,3,gone\nnothing,,1,\n"
    )
    url = sqlite_url(tmp_path)

    result = run(url, "ingest", "--create", "--collection", "mixed", str(images), "manifest.csv", cwd=tmp_path)
    assert result.returncode == 1
    assert counts(result) == (2, 0, 0, 3)
    report_path = only_report(tmp_path)
    assert report_path.name.endswith("-mixed.jsonl")
    report = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert [(line["_id"], line["source"]) for line in report] == [
        ("corrupt.jpg", str(images / "corrupt.jpg")),
        ("images/missing.png", "images/missing.png"),  # _id from _file, relative to the manifest
        ("nothing", "manifest.csv:4"),
    ]
    assert "cannot identify image" in report[0]["error"]
    assert report[1]["error"] == "No such file or directory"
    assert "neither _url nor _file" in report[2]["error"]
    # the reasons on the terminal, counted, and the first failures themselves, not only in the file
    assert "matchdb ingest: 3 failures, by reason:" in result.stderr
    assert re.search(r"^ +1  No such file or directory$", result.stderr, re.M), result.stderr
    assert f"  {images / 'corrupt.jpg'}: cannot identify image" in result.stderr
    assert "  images/missing.png: No such file or directory" in result.stderr
    assert f"all of them, as JSON lines: {report_path}" in result.stderr

    records = stored(url, "mixed")
    assert list(records) == ["good.png", "listed"]
    assert records["listed"].attributes == {"price": "12", "note": ""}  # CSV values stay strings

    custom = tmp_path / "failures.jsonl"
    rerun = run(url, "ingest", "--collection", "mixed", str(images), "--report", str(custom), cwd=tmp_path)
    assert rerun.returncode == 1 and counts(rerun) == (0, 0, 1, 1)
    assert len(custom.read_text().splitlines()) == 1


def only_report(tmp_path: Path) -> Path:
    """The one failure report of the run (a new file per run, beside the SQLite database)."""
    reports = list((tmp_path / "ingest-failures").iterdir())
    assert len(reports) == 1, reports
    return reports[0]


def test_each_run_keeps_its_own_report(tmp_path: Path) -> None:
    """Issue 26: the next ingest, into any collection, overwrote the last run's failures."""
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    url = sqlite_url(tmp_path)
    for name in ("one", "two"):
        result = run(url, "ingest", "--create", "--collection", name, str(tmp_path / "bad.jpg"), cwd=tmp_path)
        assert result.returncode == 1 and "1 failure, by reason" in result.stderr
        assert "ingested 1 image: 0 new" in result.stdout
    reports = sorted((tmp_path / "ingest-failures").iterdir())
    assert [path.name.rsplit("-", 1)[1] for path in reports] == ["one.jsonl", "two.jsonl"]


@pytest.fixture
def image_server(folder: Path) -> Iterator[int]:
    """Serves ``folder`` on 127.0.0.1 (a port of its own); yields the port."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_jsonl_manifest_with_files_and_urls(tmp_path: Path, folder: Path, image_server: int) -> None:
    base = f"http://127.0.0.1:{image_server}"
    rows: list[dict[str, Any]] = [
        {"_id": "shoe-1", "_file": str(folder / "a.png"), "price": 12, "tags": ["red", "sale"], "_width": 5},
        {"_id": 7, "_file": str(folder / "sub/f.png"), "price": 9.5, "in_stock": True},
        {"_url": f"{base}/sub/deeper/j.png", "kind": "remote"},
        {"_id": "gone", "_url": f"{base}/missing.png"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    url = sqlite_url(tmp_path)
    allow = {"MATCHDB_FETCH_ALLOW": f"127.0.0.1:{image_server}"}

    result = run(url, "ingest", "--create", "--collection", "shop", str(manifest), cwd=tmp_path, **allow)
    assert result.returncode == 1
    assert counts(result) == (3, 0, 0, 1)
    report = [json.loads(line) for line in only_report(tmp_path).read_text().splitlines()]
    assert report == [{"_id": "gone", "source": f"{base}/missing.png", "error": f"HTTP 404 from '{base}/missing.png'"}]
    assert "matchdb ingest: 1 failure, by reason:\n       1  HTTP 404 from '...'\n" in result.stderr
    assert "MATCHDB_FETCH_ALLOW" not in result.stderr  # allowed here: no hint about the SSRF guard
    refused = run(url, "ingest", "--collection", "shop", str(manifest), cwd=tmp_path)  # without the setting
    assert "MATCHDB_FETCH_ALLOW=HOST:PORT opens one" in refused.stderr
    records = stored(url, "shop")
    assert records["shoe-1"].attributes == {"price": 12, "tags": ["red", "sale"]}  # computed fields are not kept
    assert records["7"].attributes == {"price": 9.5, "in_stock": True}
    assert records[f"{base}/sub/deeper/j.png"].source_url == f"{base}/sub/deeper/j.png"

    query_file = tmp_path / "query.jpg"
    query_file.write_bytes(image_bytes(FOLDER_IMAGES["a.png"], "JPEG", quality=50))
    answer = run(url, "query", "--collection", "shop", "--json", "--radius", "20", str(query_file))
    assert answer.returncode == 0, answer.stderr
    answers = json.loads(answer.stdout)["answers"]
    assert len(answers) == 1  # the others are different pictures, far outside 20 %
    assert answers[0]["_id"] == "shoe-1" and answers[0]["distance"] < 5
    assert answers[0]["price"] == 12 and answers[0]["tags"] == ["red", "sale"]
    assert (answers[0]["_width"], answers[0]["_height"]) == (96, 72)

    # Changed attributes with the same image are an update, without the image changing.
    rows[0]["price"] = 13
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows[:3]))
    rerun = run(url, "ingest", "--collection", "shop", str(manifest), cwd=tmp_path, **allow)
    assert rerun.returncode == 0, rerun.stderr
    assert counts(rerun) == (0, 1, 2, 0)
    assert stored(url, "shop")["shoe-1"].attributes["price"] == 13


def test_collection_create_list_delete(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    created = run(url, "collection", "create", "shoes")
    assert created.returncode == 0, created.stderr
    shoes_id = created.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", shoes_id)
    assert run(url, "collection", "create", "shoes", "--workspace", "other").returncode == 0
    duplicate = run(url, "collection", "create", "shoes")
    assert duplicate.returncode == 1 and "exists already" in duplicate.stderr

    listed = [json.loads(line) for line in run(url, "collection", "list", "--json").stdout.splitlines()]
    assert [(c["name"], c["workspace"], c["records"]) for c in listed] == [
        ("shoes", "default", 0),
        ("shoes", "other", 0),
    ]
    assert listed[0]["id"] == shoes_id
    table = run(url, "collection", "list", "--workspace", "other").stdout.splitlines()
    assert table[0].split() == ["id", "name", "workspace", "records", "created"]
    assert len(table) == 2 and "shoes" in table[1] and "other" in table[1]
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", table[1])  # ISO 8601 with its zone
    assert all(c["created_at"].endswith("+00:00") for c in listed)

    ambiguous = run(url, "collection", "delete", "shoes", "--yes")
    assert ambiguous.returncode == 1 and "give --workspace or the id" in ambiguous.stderr
    refused = run(url, "collection", "delete", "shoes", "--workspace", "default")
    assert refused.returncode == 1 and "without --yes" in refused.stderr
    deleted = run(url, "collection", "delete", shoes_id, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    remaining = [json.loads(line) for line in run(url, "collection", "list", "--json").stdout.splitlines()]
    assert [c["workspace"] for c in remaining] == ["other"]
    missing = run(url, "ingest", "--collection", "nope", str(tmp_path))
    assert missing.returncode == 1 and "pass --create" in missing.stderr


@pytest.mark.postgres
def test_ingest_and_rerun_on_postgres(tmp_path: Path, folder: Path, postgres_server_url: str) -> None:
    url, drop = fresh_postgres_database(postgres_server_url)
    try:
        first = run(url, "ingest", "--create", "--collection", "photos", "-j", "2", str(folder), cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert counts(first) == (12, 0, 0, 0)
        again = run(url, "ingest", "--collection", "photos", "-j", "2", str(folder), cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert counts(again) == (0, 0, 12, 0)
        assert list(stored(url, "photos")) == sorted(FOLDER_IMAGES)
    finally:
        drop()
