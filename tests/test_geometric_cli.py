"""``matchdb dedupe --geometric`` and ``matchdb query --geometric`` on Pillow-made copies of a real photo: a
one-sided crop and a small turn are grouped with (found as) their original; unrelated images are not."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from matchdb.evaluation.transforms import make_copy
from tests.conftest import DATA
from tests.imagegen import encode, photo_like
from tests.servers import run_matchdb
from tests.test_dedupe import run, write_folder

PHOTO = Image.open(DATA / "chelsea-150x100.png").convert("RGB")


def _files() -> dict[str, bytes]:
    return {
        "a.png": encode(PHOTO, "PNG"),
        "b_crop.tiff": make_copy(PHOTO, "crop-left-20", 0, "a"),
        "c_turn.tiff": make_copy(PHOTO, "rotate-crop-5", 0, "a"),
        **{f"other{seed}.png": encode(Image.fromarray(photo_like(150, 100, seed=seed)), "PNG") for seed in range(3)},
    }


def test_dedupe_geometric_groups_crops_and_turns(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "photos", _files())
    plain = run("--json", str(folder))
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["groups"] == []  # the hashes miss both edits at their default range
    result = run("--json", "--geometric", "--keep", "first", str(folder))
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["geometric"] is True and len(document["groups"]) == 1
    group = document["groups"][0]
    assert group["members"][0]["action"] == "keep" and Path(group["members"][0]["source"]).name == "a.png"
    assert sorted(Path(member["source"]).name for member in group["members"]) == ["a.png", "b_crop.tiff", "c_turn.tiff"]
    both = run("--geometric", "--dihedral", str(folder))
    assert both.exit_code == 2 and "cannot be combined" in both.output


def test_query_geometric_finds_crops_in_a_geometric_collection(tmp_path: Path) -> None:
    files = _files()
    originals = write_folder(tmp_path / "stored", {k: v for k, v in files.items() if "_" not in k})
    env = {"MATCHDB_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    assert run_matchdb(["collection", "create", "geo", "--geometric"], env).returncode == 0
    assert run_matchdb(["collection", "create", "plain"], env).returncode == 0
    for name in ("geo", "plain"):
        ingested = run_matchdb(["ingest", str(originals), "--collection", name], env, timeout=120)
        assert ingested.returncode == 0, ingested.stderr
    queries = write_folder(tmp_path / "queries", {k: v for k, v in files.items() if "_" in k})
    paths = [str(path) for path in sorted(queries.iterdir())]
    found = run_matchdb(["query", "--collection", "geo", "--geometric", "-k", "1", "--json", *paths], env)
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line)["answers"][0] for line in found.stdout.splitlines()]
    assert [a["_id"] for a in answers] == ["a.png", "a.png"] and all(a["distance"] <= 10.9 for a in answers)
    refused = run_matchdb(["query", "--collection", "plain", "--geometric", *paths], env)
    assert refused.returncode != 0 and "not created with --geometric" in refused.stderr
