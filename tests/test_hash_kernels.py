"""Both ways of each hashing step stay exact: the compiled kernels against the numpy definitions they replace, the
libjpeg-turbo decoder against Pillow's path, and the paths a machine without numba or simplejpeg takes against
OpenCV. (tests/test_hash_exact.py checks the default path against OpenCV.)"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from matchdb.hashing import Pixels, VisualHash, decode_image, hash_image, kernels, warm_up
from matchdb.hashing.algorithms import bmh1, bmh1_numpy, phash, phash_numpy
from matchdb.hashing.decode import decode_with_pillow
from matchdb.hashing.jpeg import decode_jpeg, exif_orientation
from matchdb.hashing.png import decode_png
from matchdb.hashing.resize import grey_image, resize_grey
from tests.conftest import CorpusImage
from tests.imagegen import encode, photo_like, with_orientation
from tests.test_hash_exact import GENERATED, opencv_hashes

cv2 = pytest.importorskip("cv2")

JPEGS = sorted(name for name in GENERATED if name.endswith(".jpg"))
PNGS = sorted(name for name in GENERATED if name.endswith(".png"))


def reference_hashes(pixels: Pixels) -> dict[str, VisualHash]:
    """The numpy definitions: what runs without numba."""
    return {"bmh1": bmh1_numpy(resize_grey(pixels, 256)), "phash": phash_numpy(resize_grey(pixels, 32))}


def test_kernels_are_compiled_here() -> None:
    """Otherwise every comparison below would compare the numpy path with itself."""
    warm_up()
    compiled = kernels.compiled()
    assert compiled is not None
    dispatchers: list[Any] = list(compiled)  # numba dispatchers
    assert all(kernel.signatures for kernel in dispatchers)


@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(1, 700),
    width=st.integers(1, 700),
    orientation=st.integers(1, 8),
    channels=st.sampled_from([1, 3, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernels_equal_numpy(height: int, width: int, orientation: int, channels: int, seed: int) -> None:
    """Random pixels of any size (up- and downscales, 1-pixel edges), every layout, under every orientation: same
    grey images, same bits."""
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    pixels = Pixels(rng.integers(0, 256, shape, dtype=np.uint8), orientation)
    small, large = grey_image(pixels, 32), grey_image(pixels, 256)
    np.testing.assert_array_equal(small, resize_grey(pixels, 32))
    np.testing.assert_array_equal(large, resize_grey(pixels, 256))
    assert bmh1(large) == bmh1_numpy(large)
    assert phash(small) == phash_numpy(small)


@pytest.mark.parametrize("value", [0, 255, 17])
def test_flat_images_give_the_same_bits(value: int) -> None:
    """Flat inputs are where float round-off could flip phash bits: both ways give OpenCV's exact zeros."""
    grey = np.full((32, 32), value, dtype=np.uint8)
    assert phash(grey) == phash_numpy(grey)
    assert bmh1(np.full((256, 256), value, dtype=np.uint8)).data == b"\xff" * 120 + b"\x01"


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_numpy_and_pillow_path_equals_opencv(name: str) -> None:
    """The path of a machine without numba and simplejpeg, on every generated format."""
    data = GENERATED[name]
    _, expected = opencv_hashes(data)
    assert reference_hashes(decode_with_pillow(data)) == expected


@pytest.mark.corpus
def test_numpy_and_pillow_path_equals_opencv_on_corpus(corpus: list[CorpusImage]) -> None:
    mismatches = []
    for image in corpus:
        data = image.path.read_bytes()
        if reference_hashes(decode_with_pillow(data)) != opencv_hashes(data)[1]:
            mismatches.append(image.name)
    assert mismatches == []


@pytest.mark.parametrize("name", JPEGS)
def test_jpeg_fast_path_equals_pillow_path(name: str) -> None:
    data = GENERATED[name]
    fast = decode_jpeg(data, 10**8)
    assert fast is not None, "simplejpeg refused an ordinary JPEG"
    slow = decode_with_pillow(data)
    assert fast[1] == slow.orientation
    np.testing.assert_array_equal(Pixels(*fast).array[..., :3], slow.array[..., :3])


@pytest.mark.corpus
def test_jpeg_fast_path_takes_the_corpus(corpus: list[CorpusImage]) -> None:
    """Every corpus JPEG goes through libjpeg-turbo directly (the speed claim rests on it) with Pillow's pixels."""
    jpegs = [image for image in corpus if image.path.suffix.lower() in (".jpg", ".jpeg")]
    for image in jpegs[::10]:
        data = image.path.read_bytes()
        fast = decode_jpeg(data, 10**8)
        assert fast is not None, image.name
        np.testing.assert_array_equal(Pixels(*fast).array[..., :3], decode_with_pillow(data).array[..., :3])
    assert len(jpegs) > 400
    assert all(decode_jpeg(image.path.read_bytes(), 10**8) is not None for image in jpegs)


def test_jpeg_fast_path_leaves_the_rest_to_pillow() -> None:
    rgb = Image.fromarray(photo_like(64, 48, 1))
    jpeg = encode(rgb, "JPEG", quality=90)
    assert decode_jpeg(encode(rgb.convert("CMYK"), "JPEG"), 10**8) is None
    assert decode_jpeg(jpeg[:400], 10**8) is None  # truncated: Pillow's path raises our error
    assert decode_jpeg(jpeg, 64 * 48 - 1) is None  # over the cap: Pillow's path raises our error
    assert decode_jpeg(encode(rgb, "PNG"), 10**8) is None
    assert decode_jpeg(jpeg, 64 * 48) is not None


@pytest.mark.parametrize("name", PNGS)
def test_png_fast_path_equals_pillow_path_or_leaves_the_file_to_it(name: str) -> None:
    data = GENERATED[name]
    fast = decode_png(data, 10**8)
    plain = data[24] == 8 and data[25] in (0, 2, 6)  # IHDR bit depth and colour type
    assert (fast is not None) == plain, "plain 8-bit grey/RGB/RGBA PNGs take libpng, the rest Pillow"
    if fast is not None:
        slow = decode_with_pillow(data)
        assert fast[1] == slow.orientation
        np.testing.assert_array_equal(Pixels(*fast).array[..., :3], slow.array[..., :3])


@pytest.mark.corpus
def test_png_fast_path_takes_the_corpus_pngs(corpus: list[CorpusImage]) -> None:
    pngs = [image for image in corpus if image.path.suffix.lower() == ".png"]
    assert len(pngs) >= 10
    for image in pngs:
        data = image.path.read_bytes()
        fast = decode_png(data, 10**8)
        assert fast is not None, image.name
        slow = decode_with_pillow(data)
        assert fast[1] == slow.orientation
        np.testing.assert_array_equal(Pixels(*fast).array[..., :3], slow.array[..., :3])


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_fast_path_orientation_is_pillows() -> None:
    """Orientation in an eXIf chunk or in XMP, before the image data: read as Pillow's path reads it; after the
    image data, or in an animation: left to Pillow's path."""
    plain = encode(Image.fromarray(photo_like(40, 30, 4)), "PNG")
    after_ihdr, before_iend = 8 + 25, len(plain) - 12  # after the signature and IHDR; before IEND
    exif = _png_chunk(b"eXIf", _exif("II", [(0x0112, 3, 1, struct.pack("<HH", 6, 0))])[6:])
    xmp = _png_chunk(b"iTXt", b'XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta tiff:Orientation="8"/>')
    text = _png_chunk(b"tEXt", b"Software\x00matchdb")
    for chunk, orientation in ((exif, 6), (xmp, 8), (text, 1)):
        data = plain[:after_ihdr] + chunk + plain[after_ihdr:]
        fast = decode_png(data, 10**8)
        assert fast is not None and fast[1] == orientation == decode_with_pillow(data).orientation
        np.testing.assert_array_equal(Pixels(*fast).array[..., :3], decode_with_pillow(data).array[..., :3])
    assert decode_png(plain[:before_iend] + exif + plain[before_iend:], 10**8) is None
    assert (
        decode_png(plain[:after_ihdr] + _png_chunk(b"acTL", struct.pack(">II", 1, 0)) + plain[after_ihdr:], 10**8)
        is None
    )


def test_png_fast_path_leaves_broken_files_to_pillow() -> None:
    plain = encode(Image.fromarray(photo_like(40, 30, 4)), "PNG")
    assert decode_png(plain, 10**8) is not None
    assert decode_png(plain[:-30], 10**8) is None  # truncated: Pillow's path raises our error
    assert decode_png(plain, 40 * 30 - 1) is None  # over the cap: Pillow's path raises our error


def _exif(order: str, entries: list[tuple[int, int, int, bytes]], ifd_offset: int = 8) -> bytes:
    """A minimal EXIF block: TIFF header, then IFD0 with (tag, type, count, 4-byte value field) entries."""
    mark = "<" if order == "II" else ">"
    body = struct.pack(f"{mark}H", len(entries))
    body += b"".join(struct.pack(f"{mark}HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return b"Exif\x00\x00" + order.encode() + struct.pack(f"{mark}HI", 42, ifd_offset) + body + b"\x00" * 4


def _jpeg_with_app1(payload: bytes) -> bytes:
    """A 60 x 40 JPEG with ``payload`` as its first APP1 segment."""
    plain = encode(Image.fromarray(photo_like(60, 40, 5)), "JPEG", quality=90)
    return plain[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + plain[2:]


EXIF_CASES = {
    "little-endian-6": (_exif("II", [(0x0112, 3, 1, struct.pack("<HH", 6, 0))]), 6),
    "big-endian-6": (_exif("MM", [(0x0112, 3, 1, struct.pack(">HH", 6, 0))]), 6),
    "big-endian-8-after-another-tag": (
        _exif("MM", [(0x010F, 2, 4, b"cam\x00"), (0x0112, 3, 1, struct.pack(">HH", 8, 0))]),
        8,
    ),
    "out-of-range-9": (_exif("II", [(0x0112, 3, 1, struct.pack("<HH", 9, 0))]), 1),
    "ifd-offset-past-the-end": (_exif("II", [(0x0112, 3, 1, struct.pack("<HH", 6, 0))], ifd_offset=4000), 1),
    "entry-count-past-the-end": (_exif("II", [(0x0112, 3, 1, struct.pack("<HH", 6, 0))])[:-20], 1),
    "not-tiff": (b"Exif\x00\x00XX" + b"\x00" * 20, 1),
    "xmp-only": (b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation="6"/>', 1),
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own look at the block, in its path
@pytest.mark.parametrize("name", sorted(EXIF_CASES))
def test_exif_orientation_reads_what_opencv_reads(name: str) -> None:
    """Byte orders, a tag after others, values OpenCV ignores, malformed blocks and XMP (which Pillow would read
    and OpenCV does not): the orientation, the decoded pixels and the hashes all agree with OpenCV."""
    payload, orientation = EXIF_CASES[name]
    data = _jpeg_with_app1(payload)
    assert exif_orientation(data) == orientation
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    for pixels in (decode_image(data), decode_with_pillow(data)):
        np.testing.assert_array_equal(pixels.array[..., 2::-1], expected)
    assert hash_image(data).hashes == opencv_hashes(data)[1]


def test_exif_orientation_of_pillow_written_files() -> None:
    for orientation in range(1, 9):
        assert exif_orientation(with_orientation(photo_like(30, 20, 3), orientation)) == orientation
    assert exif_orientation(encode(Image.new("RGB", (8, 8)), "JPEG")) == 1


def _run(code: str, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return parsed


_PROBE = """
import json, sys
from matchdb.hashing import hash_image, kernels, warm_up
warm_up()
image = hash_image(open(sys.argv[1] if len(sys.argv) > 1 else {path!r}, "rb").read())
compiled = kernels.compiled()
stats = [kernel.stats for kernel in compiled] if compiled else []
print(json.dumps({{
    "compiled": compiled is not None,
    "hashes": {{kind: value.data.hex() for kind, value in image.hashes.items()}},
    "cache_hits": sum(sum(s.cache_hits.values()) for s in stats),
    "cache_misses": sum(sum(s.cache_misses.values()) for s in stats),
}}))
"""


@pytest.fixture(scope="module")
def probe_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    path = tmp_path_factory.mktemp("probe") / "probe.jpg"
    path.write_bytes(with_orientation(photo_like(300, 200, 9), 6))
    warm_up()  # compiles every kernel into the disk cache unless it is there already
    expected = {kind: value.data.hex() for kind, value in hash_image(path.read_bytes()).hashes.items()}
    return str(path), expected


def test_without_the_jit_the_numpy_path_runs_with_the_same_hashes(probe_image: tuple[str, dict[str, str]]) -> None:
    path, expected = probe_image
    out = _run(_PROBE.format(path=path), {"NUMBA_DISABLE_JIT": "1"})
    assert out["compiled"] is False
    assert out["hashes"] == expected


def test_a_fresh_process_loads_the_kernels_from_the_disk_cache(probe_image: tuple[str, dict[str, str]]) -> None:
    """This process compiled (or loaded) the kernels; a new one only loads them: the cold start of a CLI command, a
    worker, or a CI run's later test processes."""
    path, expected = probe_image
    fresh = _run(_PROBE.format(path=path), {})
    assert fresh["hashes"] == expected
    assert fresh["cache_misses"] == 0
    compiled = kernels.compiled()
    assert compiled is not None
    dispatchers: list[Any] = list(compiled)  # numba dispatchers
    signatures = sum(len(kernel.signatures) for kernel in dispatchers)
    assert fresh["cache_hits"] == signatures, [kernel.signatures for kernel in dispatchers]
