"""What an eval worker computes for the geometric matcher: queries and signatures as bytes (small and picklable).

Kept apart from :mod:`.geometric` (the measuring) so the runner, which the distance code imports, can use it.
"""

from __future__ import annotations

import numpy as np

from matchdb.geometric.query import Query, query_of
from matchdb.geometric.windows import STORED, window_hashes, working_grey
from matchdb.hashing import Pixels

NAME = "geometric"
SIGNATURE = "geometric:signature"


def entries(pixels: Pixels, original: bool) -> dict[str, list[bytes]]:
    """What a worker returns for one image: its query (and, for an original, its signature), as bytes."""
    grey = working_grey(pixels.array)
    query = query_of(grey)
    out = {NAME: [query.hashes.astype("<u8").tobytes() + query.windows.astype(np.uint8).tobytes()]}
    if original:
        out[SIGNATURE] = [window_hashes(grey, STORED).astype("<u8").tobytes()]
    return out


def unpack_query(data: bytes) -> Query:
    pairs = len(data) // 9
    hashes = np.frombuffer(data[: pairs * 8], "<u8").astype(np.uint64)
    windows = np.frombuffer(data[pairs * 8 :], np.uint8).astype(np.int64)
    return Query(np.ascontiguousarray(hashes), np.ascontiguousarray(windows))
