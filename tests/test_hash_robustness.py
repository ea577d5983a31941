"""What the hashes are for, measured on real photos: copies stay close, different photos stay far apart."""

from __future__ import annotations

import io
import statistics

import numpy as np
import pytest
from PIL import Image, ImageOps

from matchdb.hashing import hash_image
from tests.conftest import CorpusImage

pytestmark = pytest.mark.corpus


def _variants(data: bytes) -> dict[str, bytes]:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    out["jpeg-q90"] = buf.getvalue()
    half = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    half.save(buf, format="PNG")
    out["half-size"] = buf.getvalue()
    return out


def test_reencode_and_downscale_stay_close(corpus: list[CorpusImage]) -> None:
    distances: dict[str, dict[str, list[int]]] = {}
    for image in corpus:
        data = image.path.read_bytes()
        original = hash_image(data).hashes
        for name, variant in _variants(data).items():
            copy = hash_image(variant).hashes
            for kind, value in copy.items():
                distances.setdefault(name, {}).setdefault(kind, []).append(value.hamming(original[kind]))
    medians = {name: {k: statistics.median(v) for k, v in kinds.items()} for name, kinds in distances.items()}
    print("median differing bits:", medians)
    assert medians["jpeg-q90"]["bmh1"] <= 5
    assert medians["half-size"]["bmh1"] <= 5


def _pairwise_percent(corpus: list[CorpusImage], kind: str, nbits: int) -> np.ndarray:
    """Percent distances of every pair of photos from different near-duplicate groups."""
    packed = [hash_image(i.path.read_bytes(), [kind]).hashes[kind].data for i in corpus]
    bits = np.array([np.unpackbits(np.frombuffer(p, np.uint8), bitorder="little")[:nbits] for p in packed], np.int32)
    hamming = bits @ (1 - bits).T + (1 - bits) @ bits.T
    groups = np.array([i.group_id for i in corpus])
    first, second = np.triu_indices(len(corpus), k=1)
    distinct = groups[first] != groups[second]
    assert distinct.sum() > 90_000
    return np.asarray(100.0 * hamming[first, second][distinct] / nbits)


def test_distinct_photos_are_far_apart(corpus: list[CorpusImage]) -> None:
    """phash keeps all but a few distinct pairs beyond 10%. bmh1, a coarse 31 x 31 layout of bright and dark, puts
    about 1.2% of pairs within 10%: landscape photos that share a horizon (sky above, land below; most of them the
    endless-sky planet images). They are still beyond 5%, so a ``range`` of 5 separates them."""
    phash = _pairwise_percent(corpus, "phash", 64)
    bmh1 = _pairwise_percent(corpus, "bmh1", 961)
    print(
        f"pairs beyond 10%: phash {(phash > 10).mean():.3%}, bmh1 {(bmh1 > 10).mean():.3%}; "
        f"beyond 5%: bmh1 {(bmh1 > 5).mean():.3%}"
    )
    assert (phash > 10).mean() >= 0.99
    assert (bmh1 > 5).mean() >= 0.99
    assert (bmh1 > 10).mean() >= 0.985
