"""What the console's browser tests and its screenshots (docs/console.md) both need: a real ``matchdb serve`` with a
collection of 30 corpus photos inserted as ``_base64``, a read-only token, and an edited copy of a photo."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

from tests.conftest import CorpusImage
from tests.servers import run_matchdb, run_matchdb_server

TOKEN = "console-test-token-0123456789abcdef"
COLLECTION = "photos"


@dataclass(frozen=True)
class PhotoServer:
    url: str
    reader: str  # a read-only token
    photos: list[CorpusImage]


def thirty_photos(corpus: list[CorpusImage]) -> list[CorpusImage]:
    """30 photos spread over the manifest (one per group, so no two are copies of each other)."""
    first_of_group: dict[str, CorpusImage] = {}
    for image in corpus:
        first_of_group.setdefault(image.group_id, image)
    distinct = list(first_of_group.values())
    step = max(1, len(distinct) // 30)
    return distinct[::step][:30]


def record_id(image: CorpusImage) -> str:
    return image.path.stem


def edited_copy(image: CorpusImage) -> bytes:
    """Half size, JPEG quality 45."""
    with Image.open(image.path) as original:
        rgb = original.convert("RGB")
        small = rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=45)
    return out.getvalue()


@contextlib.contextmanager
def photo_server(corpus: list[CorpusImage], folder: Path) -> Iterator[PhotoServer]:
    """``matchdb serve`` on a fresh SQLite file in ``folder``, with TOKEN (read-write), a read-only token, and
    the collection COLLECTION holding the 30 photos (attribute ``group``)."""
    env = {"MATCHDB_DATABASE_URL": f"sqlite:///{folder / 'db.sqlite3'}", "MATCHDB_BOOTSTRAP_TOKEN": TOKEN}
    photos = thirty_photos(corpus)
    with run_matchdb_server(env) as url:
        made = run_matchdb(["token", "create", "--read-only", "-q"], env)
        assert made.returncode == 0, made.stderr
        with httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120) as client:
            assert client.post("/v2/collections", json={"name": COLLECTION}).status_code == 200
            records = [
                {"_id": record_id(p), "_base64": base64.b64encode(p.path.read_bytes()).decode(), "group": p.group_id}
                for p in photos
            ]
            inserted = client.post("/v2/insert", json={"records": records}, headers={"collection-id": COLLECTION})
            assert inserted.json()["status"]["code"] == 200, inserted.text
        yield PhotoServer(url, made.stdout.strip(), photos)
