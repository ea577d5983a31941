"""The opt-in ``geometric`` field of the stateless methods, through the in-process ASGI app: a cropped and a
turned copy of a real photo rank first at a small distance, unrelated images stay far, and the answers without the
flag are unchanged."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.evaluation.transforms import make_copy
from tests.conftest import DATA
from tests.imagegen import encode, photo_like
from tests.test_dihedral_api import sqlite_client  # noqa: F401 - the fixture

PHOTO = Image.open(DATA / "chelsea-150x100.png").convert("RGB")
NEAR = 12.5  # percent of 64 bits: the eval's threshold at FMR 1e-4 is at most this


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def others() -> list[dict[str, str]]:
    return [
        {"_id": f"other{seed}", "_base64": b64(encode(Image.fromarray(photo_like(150, 100, seed=seed)), "PNG"))}
        for seed in range(3)
    ]


@pytest.fixture
def client(sqlite_client: TestClient) -> TestClient:  # noqa: F811 - the imported fixture
    return sqlite_client


@pytest.mark.parametrize("edit", ["crop-left-20", "corner-tr-20", "rotate-5", "rotate-crop-5"])
def test_rank_images_finds_crops_and_turns(client: TestClient, edit: str) -> None:
    query = {"_base64": b64(make_copy(PHOTO, edit, 0, "chelsea"))}
    records = [*others(), {"_id": "photo", "_base64": b64(png(PHOTO))}]
    body = {"query_record": query, "records": records, "geometric": True}
    answer = client.post("/v2/rank_images", json=body).json()
    assert answer["answer_records"][0]["_id"] == "photo", answer["answer_distances"]
    assert answer["answer_distances"][0] <= NEAR < min(answer["answer_distances"][1:])
    plain = client.post("/v2/rank_images", json={**body, "geometric": False}).json()
    default = client.post("/v2/rank_images", json={"query_record": query, "records": records}).json()
    assert _answer(plain) == _answer(default) != _answer(answer)


def _answer(body: dict[str, Any]) -> tuple[list[str], list[float], list[int]]:
    return [r["_id"] for r in body["answer_records"]], body["answer_distances"], body["answer_hamming"]


def test_remove_duplicates_groups_crops(client: TestClient) -> None:
    records = [
        {"_id": "photo", "_base64": b64(png(PHOTO))},
        *others(),
        {"_id": "crop", "_base64": b64(make_copy(PHOTO, "crop-top-20", 0, "chelsea"))},
    ]
    answer = client.post("/v2/remove_duplicates", json={"records": records, "range": NEAR, "geometric": True}).json()
    assert [r["_id"] for r in answer["records"]] == ["photo", "other0", "other1", "other2"]
    assert [r["_id"] for r in answer["records"][0]["removed_records"]] == ["crop"]


def test_bad_flag_and_dihedral_with_geometric_are_400(client: TestClient) -> None:
    base = {"query_record": {"_base64": b64(png(PHOTO))}, "records": others()}
    assert client.post("/v2/rank_images", json={**base, "geometric": "yes"}).status_code == 400
    both = client.post("/v2/rank_images", json={**base, "geometric": True, "dihedral": True})
    assert both.status_code == 400 and "dihedral and geometric" in both.text
