"""A record's geometric signature (38 window hashes, 304 bytes) and a query's pairs, from decoded pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from matchdb.geometric.query import Query, query_of
from matchdb.geometric.windows import NWINDOWS, SIGNATURE_BYTES, STORED, window_hashes, working_grey
from matchdb.hashing import Pixels


def signature_words(pixels: Pixels) -> npt.NDArray[np.uint64]:
    """The (38,) uint64 window hashes of an image, in :data:`windows.STORED` order."""
    return window_hashes(working_grey(pixels.array), STORED)


def signature(pixels: Pixels) -> bytes:
    """The stored form: 38 little-endian uint64, 304 bytes."""
    return signature_words(pixels).astype("<u8").tobytes()


def words_of(blob: bytes) -> npt.NDArray[np.uint64]:
    """A stored signature back as (38,) uint64."""
    if len(blob) != SIGNATURE_BYTES:
        raise ValueError(f"geometric signature must be {SIGNATURE_BYTES} bytes, got {len(blob)}")
    return np.frombuffer(blob, "<u8").astype(np.uint64).reshape(NWINDOWS)


def query(pixels: Pixels) -> Query:
    """The hashes and pairs a geometric query of this image tries."""
    return query_of(working_grey(pixels.array))


@dataclass(frozen=True)
class Prepared:
    """Both sides of an image for geometric matching: its signature (to store or be compared with) and its query
    (to search with), from one grey conversion."""

    words: npt.NDArray[np.uint64]
    query: Query


def prepare(pixels: Pixels) -> Prepared:
    grey = working_grey(pixels.array)
    return Prepared(window_hashes(grey, STORED), query_of(grey))
