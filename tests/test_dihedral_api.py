"""The opt-in ``dihedral`` field of rank_images, visualKNN and visualRankRecords, through the in-process ASGI app.

A mirrored and a 90-degree turned copy of a real photo (tests/data) must be far from it with the plain hashes and
at distance ~0 with ``dihedral``; visualKNN must stay exact (checked against a brute-force minimum over the query's
orientations); the default must not change; a non-boolean ``dihedral`` is a 400 in the envelope.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.hashing import decode_image, hash_image
from matchdb.hashing.dihedral import hash_dihedral
from matchdb.web.app import create_app
from tests.conftest import DATA
from tests.imagegen import encode, photo_like

PHOTO = Image.open(DATA / "chelsea-150x100.png").convert("RGB")
COPIES = {
    "mirror": PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "rotate90": PHOTO.transpose(Image.Transpose.ROTATE_90),
}
FAR = 15.0  # percent: a turned or mirrored copy is at least this far from the photo with the plain hashes
METHODS = ("rank_images", "visualKNN", "visualRankRecords")


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def other_b64(seed: int) -> str:
    return base64.b64encode(encode(Image.fromarray(photo_like(120, 90, seed=seed)), "JPEG", quality=90)).decode()


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(database_url=database_url, hash_threads=2))) as client:
        yield client


@pytest.fixture
def sqlite_client(tmp_path: Any) -> Iterator[TestClient]:
    from matchdb.storage.database import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    with TestClient(create_app(Settings(database_url=url, hash_threads=2))) as client:
        yield client


def post(client: TestClient, method: str, body: dict[str, Any], status: int = 200, collection: str = "") -> Any:
    headers = {"collection-id": collection} if collection else {}
    response = client.post(f"/v2/{method}", json=body, headers=headers)
    assert response.status_code == status, response.text
    return response.json()


def create_collection(client: TestClient, records: list[dict[str, Any]]) -> str:
    collection: str = post(client, "collections", {"name": "dihedral"})["id"]
    assert post(client, "insert", {"records": records}, collection=collection)["status"]["code"] == 200
    return collection


# --- rank_images ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_rank_images_finds_turned_and_mirrored_copies_only_with_dihedral(sqlite_client: TestClient, copy: str) -> None:
    records = [
        {"_id": "photo", "_base64": png_b64(PHOTO)},
        *({"_id": f"o{i}", "_base64": other_b64(i)} for i in (1, 2)),
    ]
    body = {"query_record": {"_base64": png_b64(COPIES[copy])}, "records": records}
    plain = post(sqlite_client, "rank_images", body)
    distance = dict(zip([r["_id"] for r in plain["answer_records"]], plain["answer_distances"], strict=True))
    assert distance["photo"] >= FAR, plain["answer_distances"]

    turned = post(sqlite_client, "rank_images", {**body, "dihedral": True})
    assert turned["status"]["code"] == 200
    assert turned["answer_records"][0]["_id"] == "photo"
    assert turned["answer_distances"][0] <= 0.1 and turned["answer_hamming"][0] <= 1
    assert turned["answer_distances"] == sorted(turned["answer_distances"])
    assert turned["query_records"][0]["_width"] == COPIES[copy].width  # the query as sent, not a variant


def test_rank_images_dihedral_radius_k_and_ties(sqlite_client: TestClient) -> None:
    """radius then k apply to the smallest distances; equal ones keep request order, as without dihedral."""
    records = [
        {"_id": "o1", "_base64": other_b64(1)},
        {"_id": "same-a", "_base64": png_b64(PHOTO)},
        {"_id": "mirror", "_base64": png_b64(COPIES["mirror"])},
        {"_id": "same-b", "_base64": png_b64(PHOTO)},
    ]
    body = {"query_record": {"_base64": png_b64(PHOTO)}, "records": records, "dihedral": True}
    answer = post(sqlite_client, "rank_images", {**body, "radius": 1})
    assert [r["_id"] for r in answer["answer_records"]] == ["same-a", "mirror", "same-b"]
    assert answer["answer_distances"] == [0.0, 0.0, 0.0]
    assert [r["_id"] for r in post(sqlite_client, "rank_images", {**body, "k": 2})["answer_records"]] == [
        "same-a",
        "mirror",
    ]


def test_rank_images_default_unchanged(sqlite_client: TestClient) -> None:
    """No ``dihedral``, ``null`` and ``false`` give the same answer: the plain hash alone."""
    records = [{"_base64": png_b64(COPIES["mirror"]), "_id": "m"}, {"_base64": other_b64(3), "_id": "o"}]
    body: dict[str, Any] = {"query_record": {"_base64": png_b64(PHOTO)}, "records": records}
    answers = [
        post(sqlite_client, "rank_images", {**body, **extra}) for extra in ({}, {"dihedral": None}, {"dihedral": False})
    ]
    for answer in answers:
        del answer["status"], answer["statistics"]
        for record in [*answer["answer_records"], *answer["query_records"]]:
            record.pop("_status", None)
    assert answers[0] == answers[1] == answers[2]
    query = hash_image(base64.b64decode(png_b64(PHOTO)), ("bmh1",)).hashes["bmh1"]
    mirror = hash_image(base64.b64decode(records[0]["_base64"]), ("bmh1",)).hashes["bmh1"]
    assert answers[0]["answer_hamming"][[r["_id"] for r in answers[0]["answer_records"]].index("m")] == query.hamming(
        mirror
    )


# --- visualKNN and visualRankRecords ----------------------------------------------------------------------------------


def test_visual_knn_finds_turned_and_mirrored_copies_only_with_dihedral(client: TestClient) -> None:
    records = [
        {"_id": "photo", "_base64": png_b64(PHOTO)},
        *({"_id": f"o{i}", "_base64": other_b64(i)} for i in range(6)),
    ]
    collection = create_collection(client, records)
    for name, copy in COPIES.items():
        body = {"query_record": {"_base64": png_b64(copy)}, "k": 10}
        plain = post(client, "visualKNN", body, collection=collection)
        distance = dict(zip([r["_id"] for r in plain["answer_records"]], plain["answer_distances"], strict=True))
        assert distance["photo"] >= FAR, (name, plain["answer_distances"])

        turned = post(client, "visualKNN", {**body, "k": 1, "dihedral": True}, collection=collection)
        assert [r["_id"] for r in turned["answer_records"]] == ["photo"], name
        assert turned["answer_distances"][0] <= 0.1 and turned["answer_count"] == 1

        ranked = post(
            client,
            "visualRankRecords",
            {
                "query_record": {"_base64": png_b64(copy)},
                "records": [{"_id": "o1"}, {"_id": "photo"}],
                "dihedral": True,
            },
            collection=collection,
        )
        assert [r["_id"] for r in ranked["answer_records"]] == ["photo", "o1"]
        assert ranked["answer_distances"][0] <= 0.1


@pytest.mark.parametrize("kind", ["bmh1", "phash"])
def test_visual_knn_dihedral_is_exact(client: TestClient, kind: str) -> None:
    """Against brute force: each record at its smallest distance over the query's 8 orientations, sorted by
    (bits, insertion order), then radius and k; with a filter too."""
    images = {f"r{i}": encode(Image.fromarray(photo_like(80, 60, seed=40 + i % 7)), "PNG") for i in range(14)}
    images["turned"] = encode(PHOTO.transpose(Image.Transpose.ROTATE_270), "PNG")
    records = [
        {"_id": name, "_base64": base64.b64encode(data).decode(), "odd": i % 2}
        for i, (name, data) in enumerate(images.items())
    ]
    collection = create_collection(client, records)
    query = encode(PHOTO, "PNG")
    variants = [v[kind] for v in hash_dihedral(decode_image(query), (kind,))]
    order = list(images)
    expected = sorted(
        (min(v.hamming(hash_image(data, (kind,)).hashes[kind]) for v in variants), order.index(name), name)
        for name, data in images.items()
    )
    base = {"query_record": {"_base64": base64.b64encode(query).decode()}, "hash_type": kind, "dihedral": True}
    cases: list[tuple[dict[str, Any], list[tuple[int, int, str]]]] = [
        ({"k": 5}, expected[:5]),
        ({"k": 20}, expected),
        (
            {"k": 20, "radius": 30},
            [e for e in expected if round(100 * e[0] / (961 if kind == "bmh1" else 64), 1) <= 30],
        ),
        ({"k": 3, "filter": {"odd": 1}}, [e for e in expected if order.index(e[2]) % 2 == 1][:3]),
    ]
    for extra, wanted in cases:
        answer = post(client, "visualKNN", {**base, **extra}, collection=collection)
        assert [
            (r["_id"], bits) for r, bits in zip(answer["answer_records"], answer["answer_hamming"], strict=True)
        ] == [(name, bits) for bits, _, name in wanted], extra
    assert expected[0][2] == "turned" and expected[0][0] <= 1


# --- validation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("value", ["true", 1, 0, "yes", [], {}, 1.0])
def test_bad_dihedral_is_400(sqlite_client: TestClient, method: str, value: Any) -> None:
    collection = ""
    if method != "rank_images":
        collection = create_collection(sqlite_client, [{"_id": "a", "_base64": other_b64(1)}])
    body = {"query_record": {"_base64": other_b64(2)}, "records": [{"_id": "a", "_base64": other_b64(1)}]}
    answer = post(sqlite_client, method, {**body, "dihedral": value}, status=400, collection=collection)
    assert answer["status"]["code"] == 400
    assert "Field 'dihedral' must be true or false" in answer["status"]["text"]
    assert set(answer["status"]) == {"code", "text", "request_id", "proc_id"}


@pytest.mark.parametrize("method", ["visualKNN", "visualRankRecords"])
def test_dihedral_needs_an_image_query(sqlite_client: TestClient, method: str) -> None:
    collection = create_collection(sqlite_client, [{"_id": "a", "_base64": other_b64(1)}])
    body = {"query_record": {"_id": "a"}, "records": [{"_id": "a"}], "dihedral": True}
    answer = post(sqlite_client, method, body, status=400, collection=collection)
    assert "dihedral needs the query image" in answer["status"]["text"]
    assert post(sqlite_client, method, {**body, "dihedral": False}, collection=collection)["status"]["code"] == 200
