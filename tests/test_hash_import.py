"""Import of precomputed hashes: ``matchdb ingest`` of manifest rows with ``bmh1`` and ``phash`` (the strings
``visual_hash`` returns), as a real subprocess on SQLite and Postgres brought up by the real migrations; the running
app finds what was imported."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from matchdb.config import Settings
from matchdb.hashing import NBITS, VisualHash
from matchdb.hashing.value import pack_strings, packed_size
from matchdb.service.inputs import HashBlock, Item, iter_inputs, iter_items
from matchdb.web.app import create_app
from tests.imagegen import encode, photo_like
from tests.test_collections_api import Api, b64
from tests.test_ingest_cli import counts, run, stored


def random_hashes(seed: int, count: int) -> list[tuple[str, str]]:
    """``count`` (bmh1, phash) strings as ``visual_hash`` returns them (padding bits 0)."""
    generator = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        pair = []
        for kind in ("bmh1", "phash"):
            bits = generator.integers(0, 2, NBITS[kind]).astype(bool)
            pair.append(VisualHash.from_bits(kind, bits).to_string())
        out.append((pair[0], pair[1]))
    return out


def test_pack_strings_matches_from_string_and_names_each_malformed_hash() -> None:
    good = [pair[0] for pair in random_hashes(1, 5)]
    packed, errors = pack_strings("bmh1", good)
    assert errors == [None] * 5
    assert [row.tobytes() for row in packed] == [VisualHash.from_string("bmh1", text).data for text in good]
    width = packed_size("bmh1") * 8
    padded = good[0][: width - 8] + "1" + good[0][width - 7 :]  # the highest bit of the last byte: padding
    bad: list[object] = [good[0][:-1], good[0][:-1] + "2", 12, good[0][:-1] + "é", padded, good[1]]
    packed, errors = pack_strings("bmh1", bad)
    assert errors[0] == f"bmh1 must be {width} characters 0 and 1, got {width - 1}"
    assert errors[1] == errors[3] == f"bmh1 must be {width} characters 0 and 1, got other characters"
    assert errors[2] == f"bmh1 must be a string of {width} characters 0 and 1, not int"
    assert errors[4] is not None and "padding bits" in errors[4]
    assert errors[5] is None and packed[5].tobytes() == VisualHash.from_string("bmh1", good[1]).data
    assert not packed[:5].any()
    _, phash_errors = pack_strings("phash", ["01" * 32, "0" * 63])
    assert phash_errors == [None, "phash must be 64 characters 0 and 1, got 63"]


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fields)
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_import_rerun_update_and_malformed_rows(database_url: str, tmp_path: Path, suffix: str) -> None:
    hashes = random_hashes(2, 6)
    rows: list[dict[str, Any]] = [
        {"_id": f"r{i}", "bmh1": bmh1, "phash": phash, "shop": f"s{i % 2}"} for i, (bmh1, phash) in enumerate(hashes)
    ]
    rows[5]["_url"] = "https://example.com/5.jpg"  # kept as the record's _url, never fetched
    bad = [
        {"_id": "short", "bmh1": hashes[0][0][:-3], "phash": hashes[0][1]},
        {"_id": "letters", "bmh1": hashes[0][0], "phash": "x" * 64},
        {"_id": "half", "bmh1": hashes[0][0]},
    ]
    manifest = write_manifest(tmp_path / f"m{suffix}", rows[:3] + bad + rows[3:])
    report = tmp_path / "failures.jsonl"
    first = run(database_url, "ingest", "--create", "--collection", "c", "--report", str(report), str(manifest))
    assert first.returncode == 1, first.stderr
    assert counts(first) == (6, 0, 0, 3)
    failures = {line["_id"]: line["error"] for line in map(json.loads, report.read_text().splitlines())}
    assert failures == {
        "short": "bmh1 must be 968 characters 0 and 1, got 965",
        "letters": "phash must be 64 characters 0 and 1, got other characters",
        "half": "phash missing: a row with hashes needs both bmh1 and phash",
    }
    assert "by reason" in first.stderr
    records = stored(database_url, "c")
    assert list(records) == [f"r{i}" for i in range(6)]  # manifest order is insertion order
    for i, (bmh1, phash) in enumerate(hashes):
        record = records[f"r{i}"]
        assert record.bmh1 == VisualHash.from_string("bmh1", bmh1).data
        assert record.phash == VisualHash.from_string("phash", phash).data
        assert record.attributes == {"shop": f"s{i % 2}"} and (record.width, record.height) == (0, 0)
    assert records["r5"].source_url == "https://example.com/5.jpg" and records["r0"].source_url is None

    good = write_manifest(tmp_path / f"good{suffix}", rows)
    again = run(database_url, "ingest", "--collection", "c", str(good))
    assert again.returncode == 0, again.stderr
    assert counts(again) == (0, 0, 6, 0)

    changed = [dict(row) for row in rows]
    changed[1]["bmh1"] = hashes[0][0]  # r1 now holds r0's bmh1
    changed[2]["shop"] = "elsewhere"
    changed.append({"_id": "r6", "bmh1": hashes[3][0], "phash": hashes[3][1], "shop": "s0"})
    third = run(database_url, "ingest", "--collection", "c", str(write_manifest(tmp_path / f"c{suffix}", changed)))
    assert third.returncode == 0, third.stderr
    assert counts(third) == (1, 2, 4, 0)
    after = stored(database_url, "c")
    assert after["r1"].bmh1 == records["r0"].bmh1 and after["r1"].row_id == records["r1"].row_id
    assert after["r2"].attributes == {"shop": "elsewhere"} and list(after)[-1] == "r6"


def test_imported_hashes_are_found_by_the_running_app(database_url: str, tmp_path: Path) -> None:
    """``visual_hash`` of an image, imported as hashes while the app runs, is found by visualKNN of that image at
    distance 0: the import's change-log entries reach the index of a server that was already serving."""
    images = [encode(Image.fromarray(photo_like(96, 64, seed=seed)), "JPEG", quality=90) for seed in range(4)]
    with TestClient(create_app(Settings(database_url=database_url, hash_threads=2))) as client:
        api = Api(client)
        api.create("imported")
        api.call("insert", {"records": [{"_id": "by-image", "_base64": b64(images[3])}]})
        hashed = api.call("visual_hash", {"records": [{"_base64": b64(data)} for data in images[:3]]})["records"]
        rows = [{"_id": f"h{i}", "bmh1": one["bmh1"], "phash": one["phash"], "n": i} for i, one in enumerate(hashed)]
        manifest = write_manifest(tmp_path / "hashes.jsonl", rows)
        result = run(database_url, "ingest", "--collection", "imported", str(manifest))
        assert result.returncode == 0, result.stderr
        assert counts(result) == (3, 0, 0, 0)
        for i, data in enumerate(images[:3]):
            for kind in ("bmh1", "phash"):
                body = {"query_record": {"_base64": b64(data)}, "k": 1, "hash_type": kind}
                answer = api.call("visualKNN", body)
                assert answer["answer_records"][0]["_id"] == f"h{i}" and answer["answer_records"][0]["n"] == i
                assert answer["answer_distances"][0] == 0.0
        everything = api.call("visualKNN", {"query_record": {"_id": "h0"}, "k": 10})
        assert {record["_id"] for record in everything["answer_records"]} == {"h1", "h2", "by-image"}  # not itself


def test_ids_and_attributes_that_need_escaping_round_trip(database_url: str, tmp_path: Path) -> None:
    """COPY's text format escapes backslashes, tabs and line breaks: such values come back as they were given."""
    (bmh1, phash), _ = random_hashes(3, 2)
    odd_id = "tab\there\\back\nline é"
    attributes = {"note": "a\\b\tc\nd \u00e9 \u2603", "nested": {"list": [1, "x\\y"]}, "none": None}
    rows = [{"_id": odd_id, "bmh1": bmh1, "phash": phash, **attributes}]
    result = run(
        database_url, "ingest", "--create", "--collection", "odd", str(write_manifest(tmp_path / "o.jsonl", rows))
    )
    assert result.returncode == 0, result.stderr
    records = stored(database_url, "odd")
    assert list(records) == [odd_id] and records[odd_id].attributes == attributes
    again = run(database_url, "ingest", "--collection", "odd", str(tmp_path / "o.jsonl"))
    assert counts(again) == (0, 0, 1, 0)


def flattened(paths: list[Path], block: int) -> list[Item]:
    """``iter_inputs``'s items and blocks as the items ``iter_items`` makes."""
    out: list[Item] = []
    for each in iter_inputs(paths, block):
        if isinstance(each, HashBlock):
            out.extend(
                Item(ext_id, each.source(i), url=url, attributes=attributes, hashes=(bmh1, phash))
                for i, (ext_id, attributes, url, bmh1, phash) in enumerate(
                    zip(each.ext_ids, each.attributes, each.urls, each.bmh1, each.phash, strict=True)
                )
            )
        else:
            out.append(each)
    return out


def test_the_fast_reader_reads_what_the_generic_one_does(tmp_path: Path) -> None:
    """The import's reader (orjson, no item per row) and the generic one agree row for row on the rows that leave
    the fast path: bad JSON, carriage returns, a byte-order mark, large integers, nested values, repeated ids."""
    (bmh1, phash), _ = random_hashes(4, 2)
    row = {"_id": "a", "bmh1": bmh1, "phash": phash}
    lines = [
        "\ufeff" + json.dumps({**row, "price": 1.5, "n": 3, "ok": True, "none": None}),
        "",
        "{not json",
        json.dumps({**row, "_id": "big", "n": 10**30}),
        json.dumps({**row, "_id": "nested", "tags": ["x", {"y": 1}]}),
        json.dumps({**row, "_id": "nan"}).replace("}", ', "v": NaN}'),
        json.dumps({**row, "_id": "crlf", "_url": "https://example.com/x.jpg"}) + "\r",
        json.dumps({**row, "_id": "lone"}) + "\r" + json.dumps({**row, "_id": "cr2"}),
        json.dumps({**row, "_id": "a"}),  # repeated
        json.dumps({"_id": "image", "_url": "https://example.com/i.jpg"}),
        json.dumps({**row, "_id": 7}),
        json.dumps({**row, "_id": "", "_url": "https://example.com/u.jpg"}),
        json.dumps({**row, "_id": "badurl", "_url": 3}),
        json.dumps({"_id": "half", "bmh1": bmh1}),
        "[1, 2]",
        json.dumps({**row, "_id": "last", "_file": "x.jpg", "shop": "é"}),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes("\n".join(lines).encode() + b"\n")
    table = tmp_path / "m.csv"
    table.write_text(
        f"_id,bmh1,phash,shop\nc1,{bmh1},{phash},s\nc2,{bmh1},{phash}\nc3,{bmh1},{phash},s,extra\n\na,{bmh1},{phash},x\n"
        f'"q""uote",{bmh1},{phash},"multi\nline"\nimg,,,s\n',
        encoding="utf-8-sig",
    )
    paths = [manifest, table, tmp_path / "gone.jsonl"]
    expected = list(iter_items(paths))
    assert len(expected) == 23
    for block in (1, 2, 1000):
        assert flattened(paths, block) == expected
