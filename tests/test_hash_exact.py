"""bmh1 and phash equal OpenCV's img_hash bit for bit, on generated images of every supported kind and on the
photo corpus. OpenCV (opencv-contrib-python-headless, pinned in pyproject.toml) is the reference."""

from __future__ import annotations

import numpy as np
import pytest

from matchdb.hashing import HASH_TYPES, VisualHash, decode_image, hash_image
from tests.conftest import CorpusImage
from tests.imagegen import generated_cases, other_cases

cv2 = pytest.importorskip("cv2")

GENERATED = dict(generated_cases())
OTHER = dict(other_cases())


def opencv_hashes(data: bytes) -> tuple[tuple[int, int], dict[str, VisualHash]]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "OpenCV could not decode the test image"
    algorithms = {"bmh1": cv2.img_hash.BlockMeanHash_create(1), "phash": cv2.img_hash.PHash_create()}
    hashes = {kind: VisualHash(kind, algo.compute(image).tobytes()) for kind, algo in algorithms.items()}
    return (image.shape[1], image.shape[0]), hashes


def differing_bits(data: bytes) -> dict[str, int]:
    size, expected = opencv_hashes(data)
    ours = hash_image(data)
    assert (ours.width, ours.height) == size
    return {kind: ours.hashes[kind].hamming(expected[kind]) for kind in HASH_TYPES}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_image_hashes_equal_opencv(name: str) -> None:
    assert differing_bits(GENERATED[name]) == {"bmh1": 0, "phash": 0}


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_decodings_equal_opencv(name: str) -> None:
    """CMYK JPEG, transparent and animated GIF, grey+alpha and 16-bit TIFF: OpenCV's own conversions, matched."""
    assert differing_bits(OTHER[name]) == {"bmh1": 0, "phash": 0}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_decoded_pixels_equal_opencv(name: str) -> None:
    data = GENERATED[name]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    pixels = decode_image(data).array
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3]
    np.testing.assert_array_equal(rgb[..., ::-1], expected)


@pytest.mark.corpus
def test_corpus_hashes_equal_opencv(corpus: list[CorpusImage]) -> None:
    mismatches = {}
    for image in corpus:
        bits = differing_bits(image.path.read_bytes())
        if any(bits.values()):
            mismatches[image.name] = bits
    assert len(corpus) > 400
    assert mismatches == {}
