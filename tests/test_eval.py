"""`matchdb eval` on small generated images: exit codes, outputs, the metrics' arithmetic, and the HTML report
opened in a real headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image, ImageEnhance

from matchdb.cli.root import main
from matchdb.evaluation import baselines, distances, metrics
from matchdb.evaluation.transforms import NAMES, TRANSFORMS, make_copy
from matchdb.hashing import NBITS, VisualHash, decode_image, percent
from tests.imagegen import encode, photo_like

SIZES = [(96, 96), (120, 90), (200, 150), (150, 200), (128, 100), (180, 120), (100, 160), (160, 160), (140, 110)]
FEW = ("jpeg-q90", "scale-50", "noise-10", "rotate-90")  # one per kind, quick


def _write_images(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (width, height) in enumerate(SIZES):
        image = Image.fromarray(photo_like(width, height, seed=40 + seed))
        if seed % 3 == 0:
            (folder / f"img{seed:02d}.png").write_bytes(encode(image, "PNG"))
        else:
            (folder / f"img{seed:02d}.jpg").write_bytes(encode(image, "JPEG", quality=95))
    return len(SIZES)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval") / "images"
    _write_images(folder)
    return folder


def run_eval(*args: str) -> Result:
    return CliRunner().invoke(main, ["eval", "-q", *args], catch_exceptions=False)


def eval_json(*args: str) -> dict[str, Any]:
    result = run_eval(*args, "--json", "-")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_name(report: dict[str, Any], hash_name: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["name"] == hash_name)


def transform_stats(result: dict[str, Any], transform: str) -> dict[str, Any]:
    return next(t for t in result["transforms"] if t["name"] == transform)


# --- the command ---------------------------------------------------------------------------------------------------


def test_json_structure_counts_and_sanity(images: Path) -> None:
    report = eval_json(str(images), *[f"--transform={t}" for t in FEW], "-j", "1")
    n, t = len(SIZES), len(FEW)
    assert report["sources"] == report["images_found"] == n
    assert [x["name"] for x in report["transforms"]] == list(FEW)
    assert [r["name"] for r in report["results"]] == ["bmh1", "phash"]
    for result in report["results"]:
        assert result["distinct_pairs"] == n * (n - 1) * (1 + t)
        assert sum(count for _d, count in result["distinct_histogram"]) == result["distinct_pairs"]
        assert result["excluded_pairs"] == 0
        # 288 distinct pairs cannot show a rate of 1e-3: every rate is n/a, only "no false match" is reported
        rates = [p["rate"] for p in result["thresholds"]]
        assert rates == [1e-3, 1e-4, 1e-5, 0.0]
        assert [p["meaningful"] for p in result["thresholds"]] == [False, False, False, True]
        assert result["recommended"] is None  # far too few images to recommend anything
        assert result["image_pairs"] == n * (n - 1) // 2
        none = result["thresholds"][-1]
        assert none["false_matches"] == 0 and none["bits"] is not None
        jpeg = transform_stats(result, "jpeg-q90")
        assert jpeg["pairs"] == n and jpeg["recall"][-1]["recall"] == 1.0
        assert jpeg["recall"][0] is None  # n/a at 1e-3
        turned = transform_stats(result, "rotate-90")
        assert turned["median"] > jpeg["max"]
        assert result["pooled"]["pairs"] == n * 3  # rotate-90 is geometry, left out of the pool
    bmh1 = by_name(report, "bmh1")
    assert bmh1["nbits"] == 961 and transform_stats(bmh1, "jpeg-q90")["max"] <= 10


def test_table_output(images: Path) -> None:
    result = run_eval(str(images), "--transform", "jpeg-q90", "--transform", "flip", "-j", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{len(SIZES)} of {len(SIZES)} images" in out
    assert re.search(r"^bmh1 +961 +216 +n/a +n/a +n/a +\d+ b = [\d.]+ ", out, re.M)
    assert "Recall with no false match" in out
    assert re.search(r"^jpeg-q90 +100\.0 \(\d+\.\d-100\.0\) +100\.0 ", out, re.M)
    assert re.search(r"^flip +\d", out, re.M)
    assert "recommended range: bmh1 none (too few images); phash none (too few images)" in out
    assert f"No range is recommended: {len(SIZES)} images make" in out and "at least 142 distinct images" in out


def test_process_pool_gives_the_same_numbers(images: Path) -> None:
    args = [str(images), "--transform", "noise-20", "--transform", "crop-5"]
    one = eval_json(*args, "-j", "1")
    two = eval_json(*args, "-j", "2")
    one.pop("hashing_seconds"), two.pop("hashing_seconds")
    assert one == two


def test_seed_changes_only_random_transforms(images: Path) -> None:
    def noise_histogram(seed: str) -> list[Any]:
        report = eval_json(str(images), "--transform", "noise-20", "--hash-type", "bmh1", "--seed", seed, "-j", "1")
        return list(report["results"][0]["transforms"][0]["histogram"])

    assert noise_histogram("1") == noise_histogram("1")
    assert noise_histogram("1") != noise_histogram("2")


def test_dihedral_matches_flips_and_quarter_turns(images: Path) -> None:
    args = [str(images), "--transform", "flip", "--transform", "rotate-90", "--hash-type", "bmh1", "-j", "1"]
    plain = by_name(eval_json(*args), "bmh1")
    turned = by_name(eval_json(*args, "--dihedral"), "bmh1")
    for name in ("flip", "rotate-90"):
        assert transform_stats(plain, name)["median"] > 100  # bits: plain hashes do not survive these
        # A lossless mirror/turn is exactly one of the 8 orientations of the original: distance 0.
        assert transform_stats(turned, name)["max"] == 0
        assert transform_stats(turned, name)["recall"][-1]["recall"] == 1.0


def test_limit_hash_type_and_unreadable_files(tmp_path: Path) -> None:
    _write_images(tmp_path)
    (tmp_path / "aaa-broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / ".hidden.jpg").write_bytes(b"ignored")
    result = run_eval(str(tmp_path), "--limit", "4", "--hash-type", "phash", "--transform", "png", "--json", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images_found"] == 4 and report["sources"] == 3
    assert report["skipped"][0]["file"] == "aaa-broken.jpg"
    assert "cannot identify image" in report["skipped"][0]["error"]
    assert "skipped aaa-broken.jpg" in result.stderr
    assert [r["name"] for r in report["results"]] == ["phash"]
    assert report["results"][0]["distinct_pairs"] == 3 * 2 * 2


def test_a_file_reached_twice_counts_once_and_odd_names_work(tmp_path: Path) -> None:
    """A symlink to another image would be a "distinct" pair at distance 0; a name that is not UTF-8 must not
    lose its copies."""
    _write_images(tmp_path)
    (tmp_path / "zz-link.jpg").symlink_to(tmp_path / "img01.jpg")
    (tmp_path / "img03.png").rename(tmp_path / os.fsdecode(b"\xff-img03.png"))
    report = json.loads(run_eval(str(tmp_path), "--hash-type", "phash", "--transform", "png", "--json", "-").stdout)
    assert report["images_found"] == len(SIZES) and report["sources"] == len(SIZES)
    assert report["results"][0]["distinct_pairs"] == len(SIZES) * (len(SIZES) - 1) * 2
    assert transform_stats(report["results"][0], "png")["pairs"] == len(SIZES)


def test_exit_codes(tmp_path: Path, images: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_eval(str(empty))
    assert result.exit_code == 1 and "no image files found" in result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"junk")
    (broken / "b.png").write_bytes(b"")
    result = run_eval(str(broken), "--transform", "png")
    assert result.exit_code == 1
    assert "no image in" in result.stderr and "skipped a.jpg" in result.stderr and "skipped b.png" in result.stderr

    assert run_eval(str(tmp_path / "missing")).exit_code == 2
    assert run_eval(str(images), "--transform", "sepia").exit_code == 2
    assert run_eval(str(images), "--baseline", "nope").exit_code == 2
    assert run_eval(str(images), "--jobs", "0").exit_code == 2
    result = run_eval(str(images), "--html", str(tmp_path / "no" / "such" / "report.html"))
    assert result.exit_code == 2 and "does not exist" in result.output

    bad_groups = tmp_path / "groups.csv"
    bad_groups.write_text("name,cluster\nimg00.png,a\n")
    result = run_eval(str(images), "--groups", str(bad_groups))
    assert result.exit_code == 2 and "'file' column" in result.output
    bad_groups.write_text("file,group_id\nnot-there.jpg,a\n")
    result = run_eval(str(images), "--groups", str(bad_groups))
    assert result.exit_code == 2 and "no row names an image" in result.output


def test_known_groups_are_excluded(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    _write_images(folder)
    twin = ImageEnhance.Brightness(Image.open(folder / "img01.jpg")).enhance(1.05)
    (folder / "img01-twin.jpg").write_bytes(encode(twin, "JPEG", quality=90))
    groups = tmp_path / "groups.csv"
    groups.write_text("file,group_id\nphotos/img01.jpg,g1\nphotos/img01-twin.jpg,g1\nphotos/img02.jpg,g2\n")
    args = [str(folder), "--transform", "jpeg-q90", "--transform", "scale-50", "--hash-type", "bmh1", "-j", "1"]
    plain = by_name(eval_json(*args), "bmh1")
    grouped = eval_json(*args, "--groups", str(groups))
    result = by_name(grouped, "bmh1")
    n, t = len(SIZES) + 1, 2
    assert plain["distinct_pairs"] == n * (n - 1) * (1 + t)
    # the twins' pairs: each original and each copy of one against the other's original
    assert result["excluded_pairs"] == 2 * (1 + t)
    assert result["distinct_pairs"] == plain["distinct_pairs"] - 2 * (1 + t)
    assert grouped["grouped_images"] == 2
    # the twins were the closest "distinct" pair: without them no false match happens much further out
    assert plain["thresholds"][-1]["bits"] < 30 < result["thresholds"][-1]["bits"]
    assert plain["lookalikes"][0]["a"] == "img01-twin.jpg" and plain["lookalikes"][0]["b"] == "img01.jpg"
    assert plain["lookalikes"][0]["bits"] == plain["thresholds"][-1]["bits"] + 1
    assert all({p["a"], p["b"]} != {"img01.jpg", "img01-twin.jpg"} for p in result["lookalikes"])
    assert len(result["lookalikes"]) == 10 and result["lookalikes"][0]["bits"] >= 30


def test_imagehash_baseline(images: Path) -> None:
    report = eval_json(str(images), "--transform", "jpeg-q90", "--baseline", "imagehash-dhash", "-j", "1")
    result = by_name(report, "imagehash-dhash")
    assert result["nbits"] == 64
    assert transform_stats(result, "jpeg-q90")["recall"][-1]["recall"] == 1.0


def test_pdq_baseline_or_a_clear_error(images: Path) -> None:
    """pdqhash is in the ``accuracy`` extra, not ``test``: either it works or the message says how to get it."""
    result = run_eval(str(images), "--transform", "jpeg-q90", "--baseline", "pdq", "--json", "-")
    try:
        import pdqhash  # noqa: F401
    except ImportError:
        assert result.exit_code == 1 and "pip install 'matchdb[accuracy]'" in result.output
    else:
        assert result.exit_code == 0, result.output
        pdq = by_name(json.loads(result.stdout), "pdq")
        assert pdq["nbits"] == 256 and transform_stats(pdq, "jpeg-q90")["pairs"] == len(SIZES)


def test_missing_baseline_package_is_a_clear_error(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = baselines.Baseline("imagehash-phash", 64, "matchdb_no_such_package", lambda image: np.zeros(64), "x")
    monkeypatch.setitem(baselines.BASELINES, "imagehash-phash", broken)
    result = run_eval(str(images), "--baseline", "imagehash-phash")
    assert result.exit_code == 1
    assert "needs the 'matchdb_no_such_package' package" in result.output
    assert "pip install 'matchdb[accuracy]'" in result.output


def test_baselines_are_not_imported_with_the_cli() -> None:
    code = (
        "import sys, matchdb.cli.root, matchdb.evaluation.pipeline, matchdb.evaluation.report_html; "
        "print(sorted(m for m in ('imagehash', 'pdqhash') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# --- transforms ----------------------------------------------------------------------------------------------------


def test_every_transform_makes_a_decodable_copy() -> None:
    image = Image.fromarray(photo_like(120, 80, seed=3))
    sizes = {}
    for transform in TRANSFORMS:
        data = make_copy(image, transform.name, 0, "a.jpg")
        assert data == make_copy(image, transform.name, 0, "a.jpg"), transform.name  # deterministic
        pixels = decode_image(data)
        sizes[transform.name] = (pixels.width, pixels.height)
    assert sizes["jpeg-q50"] == sizes["flip"] == sizes["rotate-5"] == (120, 80)
    assert sizes["scale-50"] == (60, 40) and sizes["scale-25"] == (30, 20) and sizes["upscale-150"] == (180, 120)
    assert sizes["rotate-90"] == (80, 120) and sizes["crop-10"] == (108, 72)
    assert decode_image(make_copy(image, "greyscale", 0, "a.jpg")).is_grey
    assert make_copy(image, "noise-5", 0, "a.jpg") != make_copy(image, "noise-5", 0, "b.jpg")
    assert len(NAMES) == len(set(NAMES)) == 50


# --- distances and metrics -----------------------------------------------------------------------------------------


def test_vectorised_hamming_matches_visual_hash() -> None:
    rng = np.random.default_rng(5)
    for kind, nbits in (("bmh1", 961), ("phash", 64)):
        hashes = [VisualHash.from_bits(kind, rng.random(nbits) < 0.5) for _ in range(9)]
        packed = distances.pack([h.data for h in hashes], len(hashes[0].data))
        queries = packed[:6].reshape(3, 2, -1)  # 3 queries of 2 variants each
        got = distances.hamming(queries, packed[6:])
        for q in range(3):
            for r in range(3):
                expected = min(hashes[2 * q + k].hamming(hashes[6 + r]) for k in range(2))
                assert got[q, r] == expected


def _matrix(originals: list[int], copies: list[list[int]]) -> distances.HashMatrix:
    """A phash-sized matrix whose hashes are given as integers (bit i of the int = bit i of the hash)."""
    n, t = len(copies), len(copies[0])
    orig = np.array(originals, dtype="<u8").reshape(n, 1, 1)
    cop = np.array(copies, dtype="<u8").reshape(n, t, 1, 1)
    return distances.HashMatrix("phash", 64, orig, cop, np.ones((n, t), dtype=bool))


def test_true_and_distinct_distances_with_groups() -> None:
    # sources 0 and 1 form a known group; distances are easy to count by hand
    m = _matrix([0b0000, 0b0001, 0b1111_0000, 0xFF00], [[0b0011], [0b0001], [0b1111_0001], [0xFF00]])
    assert distances.true_distances(m).tolist() == [[2], [0], [1], [0]]
    alone = distances.distinct_distances(m, np.arange(4))
    grouped = distances.distinct_distances(m, np.array([7, 7, 8, 9]))
    assert alone.histogram.sum() == 4 * 3 * 2 and grouped.histogram.sum() == 4 * 3 * 2 - 4
    removed = alone.histogram - grouped.histogram
    # the 4 excluded pairs: orig0-orig1 (1), orig1-orig0 (1), copy0-orig1 (0b0011^0b0001: 1), copy1-orig0 (1)
    assert removed.tolist()[:3] == [0, 4, 0] and removed.sum() == 4
    # closest[s, r]: the nearest of source s's original and copy to original r
    assert alone.closest[2, 1] == 4  # copy 2 (0b1111_0001) against original 1 (0b0001); original 2 is 5 away
    assert alone.closest[1, 2] == 5 and alone.closest[0, 1] == 1 and alone.closest[1, 1] == 65
    assert grouped.closest[0, 1] == grouped.closest[1, 0] == 65  # excluded
    assert alone.source_pairs_within(1) == 1 and grouped.source_pairs_within(1) == 0
    assert alone.source_pairs_within(4) == 3  # {0, 1}, {0, 2}, {1, 2}: each counted once


def test_wilson_interval() -> None:
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-5)
    low, high = metrics.wilson_interval(10, 10)
    assert low == pytest.approx(0.72247, abs=1e-5) and high == 1.0
    low, high = metrics.wilson_interval(5, 10)
    assert low == pytest.approx(0.23659, abs=1e-5) and high == pytest.approx(0.76341, abs=1e-5)
    low, high = metrics.wilson_interval(990, 1000)
    assert low < 0.99 < high and high - low < 0.02
    assert metrics.wilson_interval(0, 0) == (0.0, 1.0)


def test_threshold_at_a_rate() -> None:
    hist = np.zeros(65, dtype=np.int64)
    hist[3], hist[5], hist[6], hist[30] = 1, 1, 10, 10_000 - 12  # 10,000 distinct pairs
    assert metrics.threshold_at(hist, 1e-3) == 5  # 10 allowed: 2 up to 5 bits, 12 up to 6
    assert metrics.threshold_at(hist, 1e-4) == 4  # 1 allowed
    assert metrics.threshold_at(hist, 0.0) == 2
    hist[0] = 5
    assert metrics.threshold_at(hist, 1e-4) is None  # identical hashes of distinct images: no threshold works
    assert metrics.meaningful(1e-4, 99_999) is False and metrics.meaningful(1e-4, 100_000) is True
    assert metrics.meaningful(0.0, 1) is True


def test_no_recommendation_from_a_folder_too_small_to_show_the_rate() -> None:
    """Issue 26: 20 photos "recommended" bmh1 19.3 at FMR 1e-3, nine times the safe range. A range is recommended
    only at 1e-4 and only from 10,000 pairs of different images (142 distinct images); never a looser fallback."""
    hist = np.zeros(65, dtype=np.int64)
    hist[20], hist[30] = 10, 19_990  # 20,000 pairs: 1e-3 is meaningful, 1e-4 is not
    points = metrics.thresholds(distances.Distinct(hist, np.zeros((2, 2), dtype=np.int16)), 64, metrics.RATES)
    assert [(p.rate, p.meaningful, p.bits) for p in points] == [
        (1e-3, True, 29),
        (1e-4, False, None),
        (1e-5, False, None),
        (0.0, True, 19),
    ]
    assert points[0].false_matches == 10 and points[0].fmr == 10 / 20_000
    assert metrics.recommend(points, image_pairs=190) is None
    assert metrics.recommend(points, image_pairs=100_000) is None  # 1e-4 not shown by the distinct pairs
    hist[30] += 100_000  # now 1e-4 is meaningful
    points = metrics.thresholds(distances.Distinct(hist, np.zeros((2, 2))), 64, metrics.RATES)
    assert metrics.recommend(points, image_pairs=9_999) is None  # but 141 images' pairs cannot support it
    chosen = metrics.recommend(points, image_pairs=10_000)
    assert chosen is not None and chosen.rate == 1e-4 and chosen.bits == 29
    assert metrics.images_for_pairs(10_000) == 142 and metrics.images_for_pairs(190) == 20


@pytest.mark.parametrize(("kind", "nbits"), [("bmh1", 961), ("phash", 64)])
def test_ranges_match_the_api_rule(kind: str, nbits: int) -> None:
    """A threshold of ``b`` bits given as ``range`` (or anything up to ``range_upto``) matches exactly the
    distances <= b under API.md's rule (round(distance, 1) <= range)."""

    def matched(range_: float) -> int:
        """The largest bit count the API matches at ``range_`` (its rule: the shown distance <= range)."""
        return max(d for d in range(nbits + 1) if round(percent(d, NBITS[kind]), 1) <= range_)

    for bits in range(nbits):
        assert matched(metrics.shown(bits, nbits)) == bits
        assert matched(metrics.range_upto(bits, nbits)) == bits
        assert matched(round(metrics.range_upto(bits, nbits) + 0.1, 1)) > bits
    assert metrics.shown(3, 64) == 4.7 and metrics.range_upto(3, 64) == 6.1


# --- the HTML report in a browser ----------------------------------------------------------------------------------

_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll("table tbody tr").length,
    plots: document.querySelectorAll("svg").length,
    curves: document.querySelectorAll("svg polyline.curve").length,
  });
  document.body.appendChild(probe);
});
</script>"""


@pytest.mark.chromium
def test_html_report_in_chromium(images: Path, tmp_path: Path) -> None:
    chromium = os.environ.get("MATCHDB_TEST_CHROMIUM")
    if not chromium:
        pytest.skip("MATCHDB_TEST_CHROMIUM is not set (point it at a Chromium binary to run this test)")
    report_path = tmp_path / "report.html"
    transforms = ("jpeg-q70", "scale-25", "greyscale", "noise-20", "watermark-logo", "rotate-90", "flip")
    args = [str(images), *[f"--transform={t}" for t in transforms], "-j", "1"]
    result = run_eval(*args, "--html", str(report_path), "--json", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    page = report_path.read_text()
    assert "<script" not in page  # self-contained and static
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", _PROBE + "</body>"))

    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe_page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    seen = json.loads(html.unescape(found.group(1)))

    misses = sum(len(r["worst_misses"]) for r in report["results"])
    assert misses >= 2 * len(report["results"])  # rotate-90 and flip are missed by every plain hash
    lookalikes = sum(min(5, len(r["lookalikes"])) for r in report["results"])
    assert lookalikes == 5 * len(report["results"])
    assert seen["images"] == 2 * misses + 2 * lookalikes  # two thumbnails per row
    assert seen["loaded"] == seen["images"]  # every thumbnail decodes in the browser
    n_hash, n_transforms = len(report["results"]), len(transforms)
    categories = len({t["category"] for t in report["transforms"]})
    assert seen["plots"] == 1 + n_hash
    assert seen["curves"] == n_hash + n_hash * categories
    # thresholds and false matches (one row per hash type each), one recall table (transforms + pooled),
    # distances, misses, look-alikes
    assert seen["rows"] == 2 * n_hash + (n_transforms + 1) + n_transforms + misses + lookalikes
