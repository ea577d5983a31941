"""``matchdb dedupe`` on small generated images: groups, ranges, keep policies, outputs, moves, failures, URLs.

Most runs are in-process (click's runner, ``--jobs 1``: hashing in a thread); one runs the real command with two
worker processes. URLs come from a local image server on 127.0.0.1, opened to the SSRF guard by
``MATCHDB_FETCH_ALLOW``; nothing connects anywhere else.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from matchdb.cli.root import main
from matchdb.dedupe import DEFAULT_RANGE
from matchdb.dedupe.collect import ORIENTATIONS, HashTable, Source
from matchdb.dedupe.grouping import KEEP_POLICIES, Group, KeepPolicy, Member, group_duplicates, keep_order
from matchdb.hashing import NBITS, hash_image
from matchdb.hashing.dihedral import TRANSFORMS
from matchdb.service.collections import max_bits_within
from tests.imagegen import encode, photo_like
from tests.servers import image_server, run_matchdb

RANGE = "5"  # percent: the copies below are within 1, distinct images are 30 or more apart


def _base(seed: int) -> Image.Image:
    return Image.fromarray(photo_like(160, 120, seed=seed))


A, B, C, D, E = (_base(seed) for seed in (101, 202, 303, 404, 505))

# name -> bytes; sorted by name this is also the input order (a folder is read in sorted relative-path order)
FILES: dict[str, bytes] = {
    "a1.png": encode(A, "PNG"),
    "a2.jpg": encode(A, "JPEG", quality=85),
    "b1.png": encode(B, "PNG"),
    "b2.jpg": encode(B.resize((80, 60), Image.Resampling.LANCZOS), "JPEG", quality=90),
    "c1.png": encode(C, "PNG"),
    "d1.png": encode(D, "PNG"),
    "d2.png": encode(D, "PNG"),  # byte-identical to d1.png
    "sub/a3.jpg": encode(A.resize((320, 240), Image.Resampling.LANCZOS), "JPEG", quality=70),  # largest copy of A
}
GROUP_ORDER = ["b1.png", "b2.jpg", "d1.png", "d2.png"]
GROUPS = [{"a1.png", "a2.jpg", "sub/a3.jpg"}, {"b1.png", "b2.jpg"}, {"d1.png", "d2.png"}]
TURNED = {
    "e1.png": encode(E, "PNG"),
    "e2.png": encode(E.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"),
    "e3.png": encode(E.transpose(Image.Transpose.ROTATE_90), "PNG"),  # a quarter turn counter-clockwise
}


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "photos", FILES)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    """The command in-process, with a clean ``MATCHDB_*`` environment (plus ``env``)."""
    clean = {name: None for name in os.environ if name.startswith("MATCHDB_")}
    return CliRunner().invoke(main, ["dedupe", "--jobs", "1", *args], env={**clean, **(env or {})})


def run_json(*args: str, code: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run("--json", *args, env=env)
    assert result.exit_code == code, (result.output, result.stderr)
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def relative(document: dict[str, Any], root: Path) -> list[tuple[str, set[str]]]:
    """Each group as (kept, removed) names relative to ``root``."""
    out = []
    for group in document["groups"]:
        names = [Path(m["source"]).relative_to(root).as_posix() for m in group["members"]]
        assert group["members"][0]["action"] == "keep"
        out.append((names[0], set(names[1:])))
    return out


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def bits(first: bytes, second: bytes, kind: str = "bmh1") -> int:
    return hash_image(first, (kind,)).hashes[kind].hamming(hash_image(second, (kind,)).hashes[kind])


def test_fixture_distances_are_as_the_tests_assume() -> None:
    limit = max_bits_within(float(RANGE), "bmh1")
    for group in GROUPS:
        names = sorted(group)
        assert all(bits(FILES[names[0]], FILES[n]) <= limit // 2 for n in names[1:]), names
    bases = ["a1.png", "b1.png", "c1.png", "d1.png"]
    assert all(bits(FILES[x], FILES[y]) > 3 * limit for x in bases for y in bases if x < y)
    assert bits(FILES["a1.png"], FILES["a2.jpg"]) > 0 and bits(FILES["a1.png"], FILES["sub/a3.jpg"]) > 0
    assert bits(FILES["b1.png"], FILES["b2.jpg"]) > 0
    assert all(bits(TURNED["e1.png"], TURNED[n]) > 3 * limit for n in ("e2.png", "e3.png"))


# --- groups and ranges --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        ("largest", {("sub/a3.jpg", frozenset({"a1.png", "a2.jpg"})), ("b1.png", frozenset({"b2.jpg"}))}),
        ("first", {("a1.png", frozenset({"a2.jpg", "sub/a3.jpg"})), ("b1.png", frozenset({"b2.jpg"}))}),
    ],
)
def test_groups_and_keep_policies(folder: Path, keep: str, expected: set[tuple[str, frozenset[str]]]) -> None:
    document = run_json(folder.as_posix(), "--range", RANGE, "--keep", keep)
    groups = {(kept, frozenset(removed)) for kept, removed in relative(document, folder)}
    # byte-identical d1/d2 tie on pixels and bytes: input order decides
    assert groups == expected | {("d1.png", frozenset({"d2.png"}))}
    assert document["summary"]["groups"] == 3 and document["summary"]["duplicates"] == 4
    assert document["summary"]["dry_run"] is True and document["failed"] == []


def _jpeg_with_camera(image: Image.Image, quality: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"  # Make, Model
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif)
    return out.getvalue()


def test_keep_largest_prefers_the_original_and_says_why(tmp_path: Path) -> None:
    """Same pixels everywhere: a colour camera JPEG beats a larger greyscale PNG copy, a larger colour PNG copy and
    a JPEG without camera tags; each group says which criterion decided."""
    a, b, c = (_base(seed) for seed in (611, 622, 633))
    files = {
        "a-grey-copy.png": encode(a.convert("L"), "PNG"),
        "a-original.jpg": encode(a, "JPEG", quality=80),
        "b-copy.png": encode(b, "PNG"),
        "b-original.jpg": encode(b, "JPEG", quality=80),
        "c-exported.jpg": encode(c, "JPEG", quality=95),
        "c-original.jpg": _jpeg_with_camera(c, 80),
    }
    assert len(files["a-grey-copy.png"]) > len(files["a-original.jpg"])  # bytes alone would keep the copy
    assert len(files["b-copy.png"]) > len(files["b-original.jpg"])
    assert len(files["c-exported.jpg"]) > len(files["c-original.jpg"])
    root = write_folder(tmp_path / "photos", files)
    document = run_json(root.as_posix(), "--range", RANGE)
    kept = {Path(g["members"][0]["source"]).name: g["kept_because"] for g in document["groups"]}
    assert set(kept) == {"a-original.jpg", "b-original.jpg", "c-original.jpg"}
    assert kept["a-original.jpg"].startswith("colour")
    assert kept["b-original.jpg"] == "original format JPEG (the copy is PNG)"
    assert kept["c-original.jpg"].startswith("camera EXIF")
    table = run(root.as_posix(), "--range", RANGE).stdout
    assert "kept: colour (a copy is greyscale)" in table
    rows = list(csv.DictReader(io.StringIO(run("--csv", root.as_posix(), "--range", RANGE).stdout)))
    assert {r["kept_because"] != "" for r in rows if r["action"] == "keep"} == {True}
    assert {r["kept_because"] for r in rows if r["action"] != "keep"} == {""}


def test_keep_oldest_uses_modification_time(folder: Path) -> None:
    now = 1_700_000_000
    for name in FILES:
        os.utime(folder / name, (now, now))
    for name, age in {"a2.jpg": 300, "b2.jpg": 100, "d2.png": 50}.items():
        os.utime(folder / name, (now - age, now - age))
    document = run_json(str(folder), "--range", RANGE, "--keep", "oldest")
    groups = {(kept, frozenset(removed)) for kept, removed in relative(document, folder)}
    assert groups == {
        ("a2.jpg", frozenset({"a1.png", "sub/a3.jpg"})),
        ("b2.jpg", frozenset({"b1.png"})),
        ("d2.png", frozenset({"d1.png"})),
    }


def test_range_zero_is_identical_hashes_only(folder: Path) -> None:
    document = run_json(str(folder), "--range", "0", "--keep", "first")
    assert relative(document, folder) == [("d1.png", {"d2.png"})]
    assert document["range"] == 0 and document["max_hamming"] == 0
    assert document["groups"][0]["members"][1]["hamming"] == 0


def test_default_range_is_the_named_constant(folder: Path) -> None:
    document = run_json(str(folder))
    assert document["range"] == DEFAULT_RANGE["bmh1"]
    assert document["max_hamming"] == max_bits_within(DEFAULT_RANGE["bmh1"], "bmh1")
    assert run_json(str(folder), "--hash-type", "phash")["range"] == DEFAULT_RANGE["phash"]
    help_text = " ".join(run("--help").stdout.split())
    for kind, value in DEFAULT_RANGE.items():
        assert f"{value:g} for {kind}" in help_text


def test_dihedral_groups_mirrored_and_turned_copies(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "turned", TURNED)
    assert run_json(str(root), "--range", RANGE)["groups"] == []
    document = run_json(str(root), "--range", RANGE, "--dihedral", "--keep", "first")
    assert relative(document, root) == [("e1.png", {"e2.png", "e3.png"})]
    members = {Path(m["source"]).name: m for m in document["groups"][0]["members"]}
    assert members["e2.png"]["transform"] == "mirror" and members["e2.png"]["distance"] <= 0.1
    assert members["e3.png"]["transform"] == "rotate270" and members["e3.png"]["distance"] <= 0.1
    assert document["dihedral"] is True


def test_phash(folder: Path) -> None:
    document = run_json(str(folder), "--hash-type", "phash", "--range", "10", "--keep", "first")
    assert document["hash_type"] == "phash" and document["nbits"] == 64
    assert {frozenset({kept, *removed}) for kept, removed in relative(document, folder)} == {
        frozenset(g) for g in GROUPS
    }


# --- outputs ------------------------------------------------------------------------------------------------------


def test_json_structure(folder: Path) -> None:
    document = run_json(str(folder), "--range", RANGE)
    assert set(document) == {
        "hash_type",
        "range",
        "max_hamming",
        "nbits",
        "keep",
        "dihedral",
        "move_to",
        "summary",
        "groups",
        "failed",
    }
    assert document["summary"] == {
        "images": 8,
        "hashed": 8,
        "failed": 0,
        "repeated_inputs": 0,
        "groups": 3,
        "duplicates": 4,
        "duplicate_bytes": sum(len(FILES[n]) for n in ("a1.png", "a2.jpg", "b2.jpg", "d2.png")),
        "dry_run": True,
        "moved": 0,
        "move_failures": 0,
    }
    member = document["groups"][0]["members"][1]
    assert set(member) == {
        "source",
        "action",
        "distance",
        "hamming",
        "transform",
        "width",
        "height",
        "bytes",
        "mtime",
        "moved_to",
    }
    assert member["action"] == "remove" and member["transform"] == "identity" and member["moved_to"] is None
    assert member["distance"] == round(100 * member["hamming"] / NBITS["bmh1"], 1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", member["mtime"])
    kept = document["groups"][0]["members"][0]
    assert (kept["width"], kept["height"], kept["hamming"]) == (320, 240, 0)


def test_csv_structure(folder: Path) -> None:
    result = run(str(folder), "--range", RANGE, "--csv", "--keep", "first")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [
        "group",
        "action",
        "source",
        "distance",
        "hamming",
        "transform",
        "width",
        "height",
        "bytes",
        "mtime",
        "moved_to",
        "error",
        "kept_because",
    ]
    # groups in the order their kept images were visited (input order for --keep first), kept image first
    assert [(r["group"], r["action"]) for r in rows] == [
        ("1", "keep"),
        ("1", "remove"),
        ("1", "remove"),
        ("2", "keep"),
        ("2", "remove"),
        ("3", "keep"),
        ("3", "remove"),
    ]
    names = [Path(r["source"]).relative_to(folder).as_posix() for r in rows]
    assert names[0] == "a1.png" and set(names[1:3]) == {"a2.jpg", "sub/a3.jpg"} and names[3:] == GROUP_ORDER
    assert int(rows[1]["hamming"]) <= int(rows[2]["hamming"])  # nearest first
    assert rows[0]["distance"] == "0.0" and rows[0]["moved_to"] == "" and rows[6]["hamming"] == "0"


def test_table_and_dry_run(folder: Path) -> None:
    before = listing(folder)
    result = run(str(folder), "--range", RANGE)
    assert result.exit_code == 0, result.stderr
    assert listing(folder) == before
    assert result.stdout.count("group ") == 3
    assert "keep" in result.stdout and "remove" in result.stdout
    assert "4 duplicates" in result.stdout and "dry run: nothing was moved" in result.stdout


def test_html_page(folder: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    result = run(str(folder), "--range", RANGE, "--html", str(page))
    assert result.exit_code == 0, result.stderr
    text = page.read_text()
    assert text.count('<section class="group card"') == 3
    assert text.count('<figure class="keep"') == 3 and text.count('<figure class="remove"') == 4
    assert text.count('src="data:image/') == 7
    assert "http" not in text.replace("http-equiv", "")  # self-contained: nothing to fetch


@pytest.mark.chromium
def test_html_page_in_chromium(folder: Path, tmp_path: Path) -> None:
    browser = os.environ.get("MATCHDB_TEST_CHROMIUM")
    if not browser:
        pytest.skip("MATCHDB_TEST_CHROMIUM is not set (point it at a headless Chromium to run this test)")
    page = tmp_path / "report.html"
    assert run(str(folder), "--range", RANGE, "--html", str(page)).exit_code == 0
    probe = tmp_path / "probe.html"  # loads the report in a frame and writes what the browser decoded
    probe.write_text(
        f'<iframe id="f" src="{page.as_uri()}"></iframe><pre id="out"></pre><script>'
        "document.getElementById('f').onload = () => { const d = document.getElementById('f').contentDocument;"
        " const imgs = [...d.images]; document.getElementById('out').textContent = JSON.stringify({"
        " images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
        " kept: d.querySelectorAll('figure.keep').length, groups: d.querySelectorAll('section.group').length}); };"
        "</script>"
    )
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r'<pre id="out">(.*?)</pre>', result.stdout)
    assert found, result.stdout + result.stderr
    assert json.loads(found.group(1).replace("&quot;", '"')) == {"images": 7, "decoded": 7, "kept": 3, "groups": 3}


# --- moving -------------------------------------------------------------------------------------------------------


def test_move_to_moves_exactly_the_duplicates(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "dupes"
    contents = {name: (folder / name).read_bytes() for name in FILES}
    document = run_json(str(folder), "--range", RANGE, "--move-to", str(target))
    assert listing(folder) == ["b1.png", "c1.png", "d1.png", "sub/a3.jpg"]
    assert listing(target) == ["a1.png", "a2.jpg", "b2.jpg", "d2.png"]
    assert all((target / name).read_bytes() == contents[name] for name in listing(target))
    assert document["summary"]["moved"] == 4 and document["summary"]["dry_run"] is False
    moved = [m for g in document["groups"] for m in g["members"] if m["action"] == "moved"]
    assert sorted(Path(m["moved_to"]).relative_to(target).as_posix() for m in moved) == listing(target)
    # a rerun finds nothing more, and does not count the moved files as inputs (the target is inside no input here,
    # but the same holds when it is: see the next test)
    assert run_json(str(folder), "--range", RANGE)["groups"] == []


def test_move_keeps_relative_paths_and_skips_its_own_folder(folder: Path) -> None:
    target = folder / "dupes"
    document = run_json(str(folder), "--range", RANGE, "--keep", "first", "--move-to", str(target))
    assert listing(target) == ["a2.jpg", "b2.jpg", "d2.png", "sub/a3.jpg"]
    again = run("--json", str(folder), "--range", RANGE, "--move-to", str(target))
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["summary"]["images"] == 4 and json.loads(again.stdout)["groups"] == []
    assert "more than once" not in again.stderr  # the moved files are not inputs, nor repeats
    assert document["summary"]["moved"] == 4


def test_move_refuses_to_overwrite(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "dupes"
    target.mkdir()
    (target / "a2.jpg").write_bytes(b"precious")
    before = listing(folder)
    result = run(str(folder), "--range", RANGE, "--keep", "first", "--move-to", str(target))
    assert result.exit_code == 2
    assert "not overwriting" in result.stderr and "a2.jpg" in result.stderr
    assert listing(folder) == before and listing(target) == ["a2.jpg"]
    assert (target / "a2.jpg").read_bytes() == b"precious"


def test_move_no_clobber_refuses_a_file_that_appeared(tmp_path: Path) -> None:
    from matchdb.dedupe.moving import move_no_clobber

    source, destination = tmp_path / "x.png", tmp_path / "out" / "x.png"
    source.write_bytes(b"mine")
    destination.parent.mkdir()
    destination.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        move_no_clobber(source, destination)
    assert source.read_bytes() == b"mine" and destination.read_bytes() == b"theirs"


def test_a_failed_cross_device_copy_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import shutil

    from matchdb.dedupe import moving

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    source, destination = tmp_path / "x.png", tmp_path / "out" / "x.png"
    source.write_bytes(b"mine")
    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with pytest.raises(OSError, match="No space"):
        moving.move_no_clobber(source, destination)
    assert source.read_bytes() == b"mine" and not destination.exists()  # a rerun is not blocked by a stray copy


def test_html_into_a_missing_folder_is_refused_before_anything_moves(folder: Path, tmp_path: Path) -> None:
    before = listing(folder)
    result = run(
        str(folder), "--range", RANGE, "--move-to", str(tmp_path / "dupes"), "--html", str(tmp_path / "no/r.html")
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert listing(folder) == before and not (tmp_path / "dupes").exists()


def test_manifest_rows_may_share_an_id(folder: Path, tmp_path: Path) -> None:
    """Several images of one product share an ``_id`` in a catalogue export: for dedupe that is no error."""
    manifest = tmp_path / "catalogue.csv"
    manifest.write_text(f"_file,_id\n{folder / 'a1.png'},sku1\n{folder / 'a2.jpg'},sku1\n{folder / 'c1.png'},sku2\n")
    document = run_json(str(manifest), "--range", RANGE, "--keep", "first")
    assert document["failed"] == [] and document["summary"]["images"] == 3
    assert [len(group["members"]) for group in document["groups"]] == [2]


def test_file_names_that_are_not_utf8(tmp_path: Path) -> None:
    root = tmp_path / "odd"
    root.mkdir()
    (root / os.fsdecode(b"\xff\xfecopy.png")).write_bytes(FILES["a2.jpg"])
    (root / "a1.png").write_bytes(FILES["a1.png"])
    page = tmp_path / "page.html"
    result = run("--json", str(root), "--range", RANGE, "--html", str(page))
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["groups"]) == 1 and page.stat().st_size > 0


# --- failures and usage errors ------------------------------------------------------------------------------------


def test_unreadable_file_exits_1_and_the_rest_is_reported(folder: Path) -> None:
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    (folder / "empty.png").write_bytes(b"")
    result = run("--json", str(folder), "--range", RANGE)
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["summary"]["groups"] == 3 and document["summary"]["failed"] == 2
    assert sorted(Path(f["source"]).name for f in document["failed"]) == ["broken.jpg", "empty.png"]
    assert "cannot identify image" in document["failed"][0]["error"]
    assert "broken.jpg" in result.stderr and "2 inputs failed to read" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/folder"], "no such file or folder"),
        (["{folder}", "--json", "--csv"], "exclusive"),
        (["{folder}", "--range", "101"], "--range"),
        (["{folder}", "--keep", "newest"], "--keep"),
        (["{folder}", "--move-to", "{folder}/a1.png"], "is a file"),
    ],
)
def test_usage_errors_exit_2(folder: Path, args: Sequence[str], message: str) -> None:
    before = listing(folder)
    result = run(*(a.format(folder=folder) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert listing(folder) == before


def test_repeated_inputs_are_counted_once(folder: Path) -> None:
    document = run_json(str(folder), str(folder / "a1.png"), str(folder), "--range", RANGE)
    assert document["summary"]["images"] == 8 and document["summary"]["repeated_inputs"] == 9
    assert document["summary"]["duplicates"] == 4


# --- URLs ---------------------------------------------------------------------------------------------------------


def test_urls_from_a_list_and_arguments(folder: Path, tmp_path: Path) -> None:
    served = {"/b-copy.png": FILES["b1.png"], "/c-small.jpg": encode(C.resize((80, 60)), "JPEG", quality=90)}
    with image_server(served) as server:
        listing_file = tmp_path / "inputs.txt"
        listing_file.write_text(f"# a comment\n{folder / 'c1.png'}\n\n{server.url('/c-small.jpg')}\n")
        env = {"MATCHDB_FETCH_ALLOW": server.allow}
        document = run_json(
            str(folder / "b1.png"), server.url("/b-copy.png"), str(listing_file), "--range", RANGE, "--keep", "first",
            "--move-to", str(tmp_path / "dupes"), "--html", str(tmp_path / "page.html"), env=env,
        )  # fmt: skip
        refused = run("--json", server.url("/b-copy.png"), str(folder / "b1.png"))  # no allowance: SSRF guard
    groups = [[(m["source"], m["action"]) for m in g["members"]] for g in document["groups"]]
    assert groups == [
        [(str(folder / "b1.png"), "keep"), (server.url("/b-copy.png"), "remove")],  # a URL is never moved
        [(str(folder / "c1.png"), "keep"), (server.url("/c-small.jpg"), "remove")],
    ]
    assert document["summary"]["moved"] == 0 and not (tmp_path / "dupes").exists()
    assert (tmp_path / "page.html").read_text().count('src="data:image/') == 4
    assert server.hits["/b-copy.png"] == 2  # hashed, then thumbnailed; the refused run never connected
    assert refused.exit_code == 1
    assert "not allowed" in json.loads(refused.stdout)["failed"][0]["error"]


# --- the library: greedy groups against brute force ---------------------------------------------------------------


def _random_table(kind: str, n: int, dihedral: bool, seed: int) -> HashTable:
    """Hashes in clusters (a base and copies a few bits away) plus loners; all but 3 rows readable."""
    rng = np.random.default_rng(seed)
    nbits, nbytes = NBITS[kind], (NBITS[kind] + 7) // 8
    orientations = ORIENTATIONS if dihedral else 1
    bases = rng.integers(0, 2, (n // 4 + 1, orientations, nbits)).astype(bool)
    rows = bases[rng.integers(0, len(bases), n)].copy()
    for row in np.flatnonzero(rng.random(n) < 0.3):  # turned copies: the same orientations, another one first
        rows[row] = np.roll(rows[row], int(rng.integers(1, orientations + 1)), axis=0)
    rows ^= rng.random(rows.shape) < 0.02
    packed = np.packbits(rows, axis=-1, bitorder="little")[..., :nbytes]
    table = HashTable.empty(kind, [Source(f"{i}.png", path=Path(f"{i}.png")) for i in range(n)], orientations)
    table.packed[:] = packed
    table.ok[:] = True
    table.ok[rng.integers(0, n, 3)] = False  # failed images are in no group
    table.width[:] = rng.integers(10, 20, n)
    table.height[:] = 10
    table.nbytes[:] = rng.integers(100, 200, n)
    table.mtime[:] = rng.integers(0, 50, n)
    return table


def _brute_force_groups(table: HashTable, max_bits: int, policy: KeepPolicy) -> list[Group]:
    """The greedy definition, spelled out: the best untaken image keeps its place and takes every untaken image
    within range of one of its orientations (distance = the smallest, then the first orientation)."""
    taken = ~table.ok.copy()
    groups = []
    for row in keep_order(table, policy).tolist():
        if taken[row]:
            continue
        taken[row] = True
        members = []
        for other in np.flatnonzero(~taken).tolist():
            distances = [int(np.unpackbits(q ^ table.packed[other, 0]).sum()) for q in table.packed[row]]
            best = min(distances)
            if best <= max_bits:
                members.append(Member(other, best, TRANSFORMS[distances.index(best)]))
        members.sort(key=lambda m: (m.bits, m.row))
        taken[[m.row for m in members]] = True
        if members:
            groups.append(Group(row, tuple(members)))
    return groups


@pytest.mark.parametrize(("kind", "dihedral"), [("bmh1", False), ("phash", False), ("bmh1", True), ("phash", True)])
@pytest.mark.parametrize("policy", KEEP_POLICIES)
def test_groups_equal_brute_force(kind: str, dihedral: bool, policy: KeepPolicy) -> None:
    table = _random_table(kind, 150, dihedral, seed=7)
    max_bits = NBITS[kind] // 10
    groups = group_duplicates(table, max_bits, policy)
    assert groups == _brute_force_groups(table, max_bits, policy)
    assert sum(len(g.removed) for g in groups) > 40
    if dihedral:
        assert {m.transform for g in groups for m in g.removed} - {"identity"}
    assert group_duplicates(table, -1, policy) == []


# --- the real command with worker processes -----------------------------------------------------------------------


def test_real_command_with_two_workers(folder: Path, tmp_path: Path) -> None:
    shutil.copy(folder / "a1.png", tmp_path / "loose.png")
    args = ["dedupe", "--jobs", "2", "--json", "--range", RANGE, str(folder), str(tmp_path / "loose.png")]
    result = run_matchdb(args, env={}, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["summary"]["groups"] == 3 and document["summary"]["duplicates"] == 5
