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


# --- collections ---------------------------------------------------------------------------------------------------


def _post(client: TestClient, method: str, body: dict[str, Any], collection: str = "", status: int = 200) -> Any:
    response = client.post(f"/v2/{method}", json=body, headers={"collection-id": collection} if collection else {})
    assert response.status_code == status, response.text
    return response.json()


def test_geometric_collection_visual_knn_rank_records_and_delete(client: TestClient) -> None:
    created = _post(client, "collections", {"name": "geo", "geometric": True})
    assert created["geometric"] is True
    plain = _post(client, "collections", {"name": "plain"})
    assert "geometric" not in plain
    records = [{"_id": "photo", "_base64": b64(png(PHOTO))}, *others()]
    for collection in (created["id"], plain["id"]):
        assert _post(client, "insert", {"records": records}, collection)["status"]["code"] == 200
    for edit in ("crop-left-20", "corner-tr-20", "rotate-5", "rotate-crop-5"):
        query = {"_base64": b64(make_copy(PHOTO, edit, 0, "chelsea"))}
        answer = _post(client, "visualKNN", {"query_record": query, "k": 2, "geometric": True}, created["id"])
        assert answer["answer_records"][0]["_id"] == "photo", edit
        assert answer["answer_distances"][0] <= NEAR < answer["answer_distances"][1]
        within = _post(client, "visualKNN", {"query_record": query, "radius": NEAR, "geometric": True}, created["id"])
        assert [r["_id"] for r in within["answer_records"]] == ["photo"]
        filtered = {"query_record": query, "geometric": True, "filter": {"_id": {"$in": ["other1"]}}}
        assert "photo" not in str(_post(client, "visualKNN", filtered, created["id"]).get("answer_records"))
        ranked = {"query_record": query, "records": [{"_id": "other0"}, {"_id": "photo"}], "geometric": True}
        answer = _post(client, "visualRankRecords", ranked, created["id"])
        assert [r["_id"] for r in answer["answer_records"]] == ["photo", "other0"]
    refused = _post(client, "visualKNN", {"query_record": records[0], "geometric": True}, plain["id"], status=400)
    assert "not created with geometric" in refused["status"]["text"]
    by_id = _post(client, "visualKNN", {"query_record": {"_id": "photo"}, "geometric": True}, created["id"], 400)
    assert "needs the query image" in by_id["status"]["text"]
    _post(client, "delete", {"records": [{"_id": "photo"}]}, created["id"])
    query = {"_base64": b64(make_copy(PHOTO, "crop-15", 0, "chelsea"))}
    after = _post(client, "visualKNN", {"query_record": query, "radius": NEAR, "geometric": True}, created["id"])
    assert after["answer_records"] == []
