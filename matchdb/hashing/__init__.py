"""Visual hashes of image bytes: decode (libjpeg-turbo / Pillow) -> exact OpenCV resize and grey -> bmh1 / phash.

Pure functions: no I/O, no clock, no globals beyond the compiled kernels (:mod:`.kernels`). ``hash_image`` is the
one entry point the service and CLI use; ``warm_up`` compiles (or loads) the kernels ahead of the first image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from matchdb.hashing.algorithms import BMH1_SIZE, PHASH_SIZE, bmh1, phash
from matchdb.hashing.decode import DEFAULT_MAX_PIXELS, Pixels, decode_image
from matchdb.hashing.resize import grey_image
from matchdb.hashing.thumbnail import thumbnail_bytes
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
    "warm_up",
]


@dataclass(frozen=True)
class HashedImage:
    """What one image yields: its decoded size, the requested hashes by kind and, when asked, its thumbnail."""

    width: int
    height: int
    hashes: dict[str, VisualHash]
    thumbnail: bytes | None = None


def hash_pixels(pixels: Pixels, kinds: Iterable[str] = HASH_TYPES) -> dict[str, VisualHash]:
    """Compute the requested hash kinds of decoded pixels."""
    out: dict[str, VisualHash] = {}
    for kind in kinds:
        if kind == "bmh1":
            out[kind] = bmh1(grey_image(pixels, BMH1_SIZE))
        elif kind == "phash":
            out[kind] = phash(grey_image(pixels, PHASH_SIZE))
        else:
            raise ValueError(f"unknown hash type {kind!r}; expected one of {', '.join(HASH_TYPES)}")
    return out


def hash_image(
    data: bytes, kinds: Iterable[str] = HASH_TYPES, max_pixels: int = DEFAULT_MAX_PIXELS, thumbnail: bool = False
) -> HashedImage:
    """Decode image bytes and hash them (and make the stored thumbnail from the same pixels, if ``thumbnail``);
    raises :class:`matchdb.errors.ImageError` for bad images."""
    pixels = decode_image(data, max_pixels)
    picture = thumbnail_bytes(pixels) if thumbnail else None
    return HashedImage(pixels.width, pixels.height, hash_pixels(pixels, kinds), picture)


def warm_up() -> None:
    """Compile the hashing kernels now (or load them from numba's disk cache) instead of on the first image: about
    a second from the cache, several on a machine's very first run. Servers call it at start, off the event loop."""
    for buffer in (np.zeros((2, 2, 4), dtype=np.uint8), np.zeros((2, 2), dtype=np.uint8)):
        hash_pixels(Pixels(buffer))
