"""Decoding: formats, the pixel layout, and one clear error type with a readable message for bad input."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from matchdb.errors import ImageError, MatchdbError
from matchdb.hashing import decode_image, hash_image
from tests.imagegen import encode, photo_like


def rgb_jpeg(width: int = 64, height: int = 48) -> bytes:
    return encode(Image.fromarray(photo_like(width, height, 1)), "JPEG", quality=90)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no pixel data: a decompression bomb probe."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_error_type_is_one_matchdb_error() -> None:
    assert issubclass(ImageError, MatchdbError)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "cannot identify image"),
        (b"hello, this is not an image at all", "cannot identify image"),
        (b"%PDF-1.4 pretending", "cannot identify image"),
        (rgb_jpeg()[:300], "image truncated"),
        (encode(Image.fromarray(photo_like(64, 48, 2)), "PNG")[:200], "image truncated"),
        (rgb_jpeg()[:2] + b"\xff\xd8" + bytes(range(256)) * 4, "image"),
    ],
    ids=["empty", "text", "pdf", "truncated-jpeg", "truncated-png", "garbage-after-soi"],
)
def test_bad_bytes_raise_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data)


def test_pixel_cap_refuses_before_decoding() -> None:
    with pytest.raises(ImageError, match=r"image too large: 3072 pixels > limit 3000"):
        decode_image(rgb_jpeg(64, 48), max_pixels=3000)
    assert decode_image(rgb_jpeg(64, 48), max_pixels=3072).width == 64


def test_decompression_bomb_header_is_refused_without_allocating() -> None:
    with pytest.raises(ImageError, match=r"image too large: 2500000000 pixels > limit"):
        decode_image(png_header_only(50_000, 50_000))


def test_pillow_own_bomb_guard_maps_to_the_same_message() -> None:
    with pytest.raises(ImageError, match="image too large"):
        decode_image(png_header_only(60_000, 60_000), max_pixels=10**10)


def test_unsupported_format_is_refused() -> None:
    with pytest.raises(ImageError, match="cannot identify image"):
        decode_image(encode(Image.new("RGB", (8, 8)), "PCX"))


def test_layout_rgb_jpeg_is_decoded_straight_into_numpy() -> None:
    pixels = decode_image(rgb_jpeg(64, 48))
    assert pixels.buffer.shape == (48, 64, 3)
    assert pixels.buffer.flags.owndata, "the fast path (libjpeg-turbo decoding into our buffer) was not taken"
    assert (pixels.width, pixels.height, pixels.is_grey) == (64, 48, False)


def test_layout_of_pillow_decoded_rgb() -> None:
    pixels = decode_image(encode(Image.fromarray(photo_like(64, 48, 1)), "TIFF"))
    assert pixels.buffer.shape == (48, 64, 4)
    assert pixels.buffer.flags.owndata, "the fast path (Pillow decoding into our buffer) was not taken"


def test_layout_grey() -> None:
    pixels = decode_image(encode(Image.new("L", (5, 7), 9), "PNG"))
    assert pixels.buffer.shape == (7, 5)
    assert pixels.is_grey
    assert int(pixels.array[3, 2]) == 9


def test_orientation_swaps_width_and_height() -> None:
    from tests.imagegen import with_orientation

    pixels = decode_image(with_orientation(photo_like(30, 20, 3), 6))
    assert (pixels.width, pixels.height) == (20, 30)
    assert pixels.array.shape[:2] == (30, 20)


def test_first_frame_of_animation() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    import io

    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(buf.getvalue())
    assert pixels.array[0, 0, 0] > 200 and pixels.array[0, 0, 2] < 50


def test_hash_image_reports_size() -> None:
    result = hash_image(rgb_jpeg(64, 48), ["phash"])
    assert (result.width, result.height) == (64, 48)
    assert set(result.hashes) == {"phash"}


def test_unknown_hash_type() -> None:
    with pytest.raises(ValueError, match="unknown hash type"):
        hash_image(rgb_jpeg(), ["md5"])


def test_pixels_are_uint8_without_full_copy_for_flips() -> None:
    from tests.imagegen import with_orientation

    pixels = decode_image(with_orientation(photo_like(30, 20, 3), 3))
    assert np.shares_memory(pixels.array, pixels.buffer)
