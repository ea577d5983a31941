"""Record thumbnails: made on insert (and by ``matchdb ingest``) from the decoded image, upright, at most 160 px,
served by ``/v2/thumbnail``, gone with their record or collection, absent with ``MATCHDB_THUMBNAILS=0``; and the
``ping`` field that tells a client who it is. Real app, real SQLite and Postgres."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.schema import thumbnails
from matchdb.web.app import create_app
from tests.imagegen import encode, photo_like
from tests.servers import run_matchdb
from tests.test_collections_api import Api, b64, image_b64, token


def client_for(database_url: str, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(database_url=database_url, hash_threads=2, **settings)))  # type: ignore[arg-type]


def picture(response_content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(response_content))
    image.load()
    return image


def thumbnail(api: Api, ext_id: str) -> tuple[int, bytes, str]:
    headers = {**api.headers, "collection-id": api.collection}
    response = api.client.get("/v2/thumbnail", params={"_id": ext_id}, headers=headers)
    return response.status_code, response.content, response.headers.get("content-type", "")


def test_insert_stores_a_small_upright_thumbnail(database_url: str, engine: Engine) -> None:
    # 600 x 300 landscape, saved with EXIF orientation 6 (viewer turns it 90 degrees): upright it is 300 x 600
    pixels = photo_like(600, 300, seed=5)
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = encode(Image.fromarray(pixels), "JPEG", quality=90, exif=exif.tobytes())
    with client_for(database_url) as client:
        api = Api(client)
        api.create("thumbs")
        api.call("insert", {"records": [{"_id": "a", "_base64": b64(turned)}, {"_id": "b", "_base64": image_b64(2)}]})
        status, content, media_type = thumbnail(api, "a")
        assert (status, media_type) == (200, "image/jpeg")
        image = picture(content)
        assert image.size == (80, 160)  # upright (portrait), longest side 160
        assert len(content) < 8000
        # the picture is the image (upright), not something else: compare with Pillow's own upright shrink
        expected = np.asarray(Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_270).resize((80, 160)))
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - expected).mean() < 12

        # POST works too; an unknown _id and a missing _id are errors in words
        headers = {"collection-id": api.collection}
        assert client.post("/v2/thumbnail", json={"_id": "b"}, headers=headers).status_code == 200
        missing = client.get("/v2/thumbnail", params={"_id": "nope"}, headers=headers)
        assert missing.status_code == 404 and "No record with _id 'nope'" in missing.json()["status"]["text"]
        assert client.get("/v2/thumbnail", headers=headers).status_code == 400

        # deleted with the record, and with the collection
        api.call("delete", {"records": [{"_id": "a"}]})
        assert thumbnail(api, "a")[0] == 404
        assert client.delete(f"/v2/collections/{api.collection}").status_code == 200
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(thumbnails)).scalar_one() == 0


def test_thumbnails_off_stores_none_and_an_upsert_drops_a_stale_one(database_url: str) -> None:
    with client_for(database_url) as client:
        api = Api(client)
        api.create("c")
        api.call("insert", {"records": [{"_id": "a", "_base64": image_b64(1)}]})
        assert thumbnail(api, "a")[0] == 200
    with client_for(database_url, thumbnails=False) as client:
        api.client = client
        api.call("insert", {"records": [{"_id": "a", "_base64": image_b64(3)}, {"_id": "b", "_base64": image_b64(4)}]})
        assert thumbnail(api, "a")[:2] == (204, b"")  # its image changed: the old picture must not stay
        assert thumbnail(api, "b")[:2] == (204, b"")


def test_thumbnail_needs_a_token_and_ping_says_who_calls(database_url: str, engine: Engine) -> None:
    with client_for(database_url) as client:
        open_ping = client.get("/v2/ping").json()
        assert open_ping["access"] == {"workspace": "default", "read_only": False, "open": True}
        assert client.get("/console/server.json").json() == {"open": True, "max_records": 100}
        writer = token(engine)
        reader = token(engine, read_only=True)
        api = Api(client, writer)
        api.create("c")
        api.call("insert", {"records": [{"_id": "a", "_base64": image_b64(1)}]})
        assert thumbnail(api, "a")[0] == 200
        read_api = Api(client, reader)
        read_api.collection = api.collection
        assert thumbnail(read_api, "a")[0] == 200
        anonymous = Api(client)
        anonymous.collection = api.collection
        assert thumbnail(anonymous, "a")[0] == 401
        ping = client.get("/v2/ping", headers={"Authorization": f"Token {reader}"}).json()
        assert ping["access"] == {"workspace": "default", "read_only": True, "open": False}
        assert client.get("/console/server.json").json()["open"] is False


def test_ingest_makes_thumbnails_and_keeps_them_when_the_image_is_unchanged(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(photo_like(320, 200, seed=9)).save(folder / "one.jpg", quality=90)
    env = {"MATCHDB_DATABASE_URL": database_url}
    manifest = folder / "manifest.jsonl"
    for version in (1, 2):  # the second run changes an attribute only: the image is not decoded again, and its
        # thumbnail must stay
        manifest.write_text(f'{{"_id": "one", "_file": "one.jpg", "version": {version}}}\n')
        result = run_matchdb(["ingest", "--collection", "c", "--create", "-j", "1", str(manifest)], env, timeout=120)
        assert result.returncode == 0, result.stderr
        with client_for(database_url) as client:
            api = Api(client)
            api.collection = "c"
            assert api.call("get", {"records": [{"_id": "one"}]})["records"][0]["version"] == version
            status, content, _ = thumbnail(api, "one")
            assert status == 200
            assert picture(content).size == (160, 100)
