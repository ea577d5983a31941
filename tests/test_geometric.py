"""The geometric matcher on real photos: crops and small turns are found, unrelated photos are not; the compiled
scan equals the numpy reference; the index adds, replaces, removes and searches from snapshots."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from matchdb import geometric
from matchdb.evaluation.runner import pixels_to_image
from matchdb.evaluation.transforms import make_copy
from matchdb.geometric import scan
from matchdb.hashing import decode_image
from tests.conftest import CorpusImage

pytestmark = pytest.mark.corpus

THRESHOLD = 8  # bits of 64: the eval's threshold at FMR 1e-4 on the shared corpus is at most this
EDITS = ("crop-15", "crop-left-20", "corner-br-15", "rotate-5", "rotate-crop-5", "rotate-cw-4", "jpeg-q50")


def _photos(corpus: list[CorpusImage], count: int) -> list[CorpusImage]:
    photos = [image for image in corpus if image.path.parent.name == "photos"]
    groups: set[str] = set()
    chosen = []
    for image in photos[:: max(1, len(photos) // (count * 2))]:
        if image.group_id not in groups:
            groups.add(image.group_id)
            chosen.append(image)
    return chosen[:count]


@pytest.fixture(scope="module")
def stored(corpus: list[CorpusImage]) -> tuple[list[CorpusImage], geometric.GeometricIndex]:
    photos = _photos(corpus, 24)
    index = geometric.GeometricIndex()
    for row, photo in enumerate(photos):
        index.add(row, geometric.signature_words(decode_image(photo.path.read_bytes(), 50_000_000)))
    return photos, index


def test_signature_is_304_bytes_and_round_trips(corpus: list[CorpusImage]) -> None:
    pixels = decode_image(_photos(corpus, 1)[0].path.read_bytes(), 50_000_000)
    blob = geometric.signature(pixels)
    assert len(blob) == geometric.SIGNATURE_BYTES == 304
    assert np.array_equal(geometric.words_of(blob), geometric.signature_words(pixels))
    assert len(geometric.query(pixels)) == 57


def test_edited_copies_found_and_others_not(stored: tuple[list[CorpusImage], geometric.GeometricIndex]) -> None:
    photos, index = stored
    for row, photo in enumerate(photos[:8]):
        image = pixels_to_image(decode_image(photo.path.read_bytes(), 50_000_000))
        for edit in EDITS:
            query = geometric.query(decode_image(make_copy(image, edit, 0, photo.name), 50_000_000))
            found = index.search(query, THRESHOLD)
            assert [record for record, _bits in found] == [row], (photo.name, edit, index.search(query, 64, 3))


def test_compiled_scan_equals_numpy(stored: tuple[list[CorpusImage], geometric.GeometricIndex]) -> None:
    photos, index = stored
    snap = index.snapshot()
    rng = np.random.default_rng(1)
    sigs = np.concatenate([snap.sigs[: snap.count], rng.integers(0, 2**63, (5000, 38), dtype=np.uint64)])
    ids = np.arange(len(sigs), dtype=np.int64)
    ids[::7] = -1
    for photo in photos[:4]:
        query = geometric.query(decode_image(photo.path.read_bytes(), 50_000_000))
        assert np.array_equal(scan.scores(sigs, ids, len(sigs), query), scan.scores_numpy(sigs, ids, query))


def test_index_replace_remove_and_k_nearest(stored: tuple[list[CorpusImage], geometric.GeometricIndex]) -> None:
    photos, built = stored
    snap = built.snapshot()
    index = geometric.GeometricIndex()
    index.add_many(np.arange(snap.count, dtype=np.int64), snap.sigs[: snap.count])
    query = geometric.query(decode_image(photos[3].path.read_bytes(), 50_000_000))
    assert index.search(query, 64, 1) == [(3, 0)]
    nearest = index.search(query, 64, 5)
    assert len(nearest) == 5 and [bits for _r, bits in nearest] == sorted(bits for _r, bits in nearest)
    before = index.snapshot()
    index.add(3, snap.sigs[5])  # replace: record 3 now looks like photo 5
    assert index.search(query, 0) == [] and len(index) == snap.count
    assert before.search(query, 0) == []  # the old snapshot's row of record 3 is dead now, never reused
    assert index.remove(3) and not index.remove(3) and 3 not in index
    for record in range(snap.count):  # removing most compacts; the rest are still found exactly
        if record % 4:
            index.remove(record)
    for record in range(0, snap.count, 4):
        if record != 3:
            assert index.search(geometric.Query(snap.sigs[record][:1], np.zeros(1, np.int64)), 0) == [(record, 0)]


def test_search_does_not_hold_the_lock_while_scanning() -> None:
    index = geometric.GeometricIndex()
    rng = np.random.default_rng(2)
    index.add_many(np.arange(200_000, dtype=np.int64), rng.integers(0, 2**63, (200_000, 38), dtype=np.uint64))
    grey = Image.linear_gradient("L").resize((300, 200))
    query = geometric.query(decode_image(_png(grey), 50_000_000))
    snap = index.snapshot()
    done = threading.Event()
    writes: list[bool] = []

    def write() -> None:
        while not done.is_set():
            writes.append(index.remove(len(writes)))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(3):
            snap.search(query, 64, 10)
    finally:
        done.set()
        writer.join()
    assert writes  # the writer ran while scans were going on


def _png(image: Image.Image) -> bytes:
    import io

    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_eval_measures_the_geometric_matcher(corpus: list[CorpusImage]) -> None:
    from matchdb.evaluation import pipeline
    from matchdb.evaluation.runner import Plan

    root = _photos(corpus, 1)[0].path.parent
    inputs = pipeline.prepare(root, limit=12)
    transforms = ("png", "crop-left-20", "rotate-crop-5", "flip")
    plan = Plan(("phash",), (), transforms, dihedral=False, seed=0, max_pixels=50_000_000, geometric=True)
    report = pipeline.evaluate(inputs, plan, jobs=1, progress=False).to_dict()
    phash, geo = report["results"]
    assert geo["name"] == "geometric" and geo["nbits"] == 64
    assert geo["distinct_pairs"] == phash["distinct_pairs"]  # the same queries against the same originals
    worst = {t["name"]: t["max"] for t in geo["transforms"]}
    assert worst["png"] == 0 and worst["crop-left-20"] <= THRESHOLD and worst["rotate-crop-5"] <= THRESHOLD
    assert worst["flip"] > THRESHOLD
