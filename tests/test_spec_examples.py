"""Ximilar's own examples: the JSON request and response bodies of its Image Matching documentation (the file that
MATCHDB_TEST_SPEC names; CI points it at ../shared/spec) are sent to matchdb with local images, and every key of
each example response must be in matchdb's reply with the same JSON type."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.storage.database import make_engine, upgrade
from matchdb.web.app import create_app
from tests.imagegen import encode, photo_like
from tests.servers import closed_port, image_server


def spec_text() -> str:
    path = os.environ.get("MATCHDB_TEST_SPEC")
    if not path:
        pytest.skip("MATCHDB_TEST_SPEC is not set (point it at Ximilar's image matching documentation)")
    return Path(path).read_text()


def spec_examples() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(method, request body, response body) for every method documented with a curl example."""
    text = spec_text()
    decoder = json.JSONDecoder()
    out = []
    for match in re.finditer(r"/image_matching/v2/(\w+) \\", text):
        method = match.group(1)
        rest = text[match.end() :]
        data = re.search(r"--data '", rest)
        request: dict[str, Any] = {}
        response_at = rest.index("Response\n")
        if data is not None and data.start() < response_at:
            request, _ = decoder.raw_decode(rest[data.end() :])
        response, _ = decoder.raw_decode(rest[rest.index("{", response_at) :])
        out.append((method, request, response))
    return out


def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number" if isinstance(value, float) else "integer"
    return {dict: "object", list: "array", str: "string", type(None): "null"}[type(value)]


def same_shape(example: Any, actual: Any, where: str = "$") -> list[str]:
    """Where ``actual`` lacks a key of ``example`` or holds another JSON type (integers count as numbers)."""
    kinds = {json_type(example), json_type(actual)}
    if json_type(example) != json_type(actual) and kinds != {"number", "integer"}:
        return [f"{where}: {json_type(example)} expected, got {json_type(actual)}"]
    problems = []
    if isinstance(example, dict):
        for key, value in example.items():
            if "records[" in where and not key.startswith("_") and key != "removed_records":
                continue  # a caller's own attribute (the spec's rank_images example shows one it never sent)
            if key not in actual:
                problems.append(f"{where}.{key}: missing")
            else:
                problems.extend(same_shape(value, actual[key], f"{where}.{key}"))
    elif isinstance(example, list) and example:
        if not actual:
            return [f"{where}: empty, expected {len(example)} items"]
        for i, item in enumerate(example[: len(actual)]):
            problems.extend(same_shape(item, actual[i], f"{where}[{i}]"))
    return problems


def localise(value: Any, urls: dict[str, str]) -> Any:
    """The request with every example URL replaced by a local one."""
    if isinstance(value, dict):
        return {k: localise(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [localise(v, urls) for v in value]
    if isinstance(value, str) and value.startswith(("http", "__URL")):
        return urls.setdefault(value, "")
    return value


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[TestClient, dict[str, str]]]:
    images = {f"/img{i}.jpg": encode(Image.fromarray(photo_like(259, 460, seed=i)), "JPEG", quality=90) for i in (1, 2)}
    images["/img3.jpg"] = encode(Image.fromarray(photo_like(212, 289, seed=3)), "JPEG", quality=90)
    down = closed_port()
    with image_server(images) as server:
        urls = {
            "__URL_PATH_1__": server.url("/img1.jpg"),
            "__URL_PATH_2__": server.url("/img2.jpg"),
            "__URL_PATH_3__": server.url("/img3.jpg"),
            "__URL_PATH_4_NOT_WORKING__": f"http://127.0.0.1:{down}/missing.jpg",
        }
        for example in spec_examples():
            for url in re.findall(r"https://images\.ximilar\.com[^\"']+", json.dumps(example[1])):
                urls[url] = server.url("/img1.jpg")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/spec.sqlite3"
            upgrade(make_engine(url))
            settings = Settings(database_url=url, fetch_allow=(server.allow, f"127.0.0.1:{down}"), fetch_attempts=3)
            with TestClient(create_app(settings)) as client:
                yield client, urls


def test_the_spec_has_four_examples() -> None:
    assert [method for method, _, _ in spec_examples()] == ["ping", "visual_hash", "remove_duplicates", "rank_images"]


@pytest.mark.parametrize("index", range(4), ids=["ping", "visual_hash", "remove_duplicates", "rank_images"])
def test_replies_have_the_keys_and_types_of_the_spec_examples(
    served: tuple[TestClient, dict[str, str]], index: int
) -> None:
    client, urls = served
    method, request, example = spec_examples()[index]
    body = localise(request, urls)
    assert all(urls.values()), "an example URL has no local stand-in"
    response = client.post(f"/v2/{method}", json=body) if body else client.post(f"/v2/{method}")
    reply = response.json()
    assert same_shape(example, reply) == []
    assert reply["status"]["code"] == example["status"]["code"]
    assert response.status_code == 200
