"""Visual hashes of image bytes: decode (Pillow) -> exact OpenCV resize and grey -> bmh1 / phash.

Pure functions: no I/O, no clock, no globals. ``hash_image`` is the one entry point the service and CLI use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from matchdb.hashing.algorithms import BMH1_SIZE, PHASH_SIZE, bmh1, phash
from matchdb.hashing.decode import DEFAULT_MAX_PIXELS, Pixels, decode_image
from matchdb.hashing.resize import resize_grey
from matchdb.hashing.value import ALGORITHM_VERSION, HASH_TYPES, NBITS, VisualHash, percent

__all__ = [
    "ALGORITHM_VERSION",
    "DEFAULT_MAX_PIXELS",
    "HASH_TYPES",
    "NBITS",
    "HashedImage",
    "Pixels",
    "VisualHash",
    "decode_image",
    "hash_image",
    "hash_pixels",
    "percent",
]


@dataclass(frozen=True)
class HashedImage:
    """What one image yields: its decoded size and the requested hashes by kind."""

    width: int
    height: int
    hashes: dict[str, VisualHash]


def hash_pixels(pixels: Pixels, kinds: Iterable[str] = HASH_TYPES) -> dict[str, VisualHash]:
    """Compute the requested hash kinds of decoded pixels."""
    out: dict[str, VisualHash] = {}
    for kind in kinds:
        if kind == "bmh1":
            out[kind] = bmh1(resize_grey(pixels, BMH1_SIZE))
        elif kind == "phash":
            out[kind] = phash(resize_grey(pixels, PHASH_SIZE))
        else:
            raise ValueError(f"unknown hash type {kind!r}; expected one of {', '.join(HASH_TYPES)}")
    return out


def hash_image(data: bytes, kinds: Iterable[str] = HASH_TYPES, max_pixels: int = DEFAULT_MAX_PIXELS) -> HashedImage:
    """Decode image bytes and hash them; raises :class:`matchdb.errors.ImageError` for bad images."""
    pixels = decode_image(data, max_pixels)
    return HashedImage(pixels.width, pixels.height, hash_pixels(pixels, kinds))
