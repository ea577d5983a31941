"""``matchdb eval --geometric``: the geometric matcher measured like a hash, on the same originals and copies.

Its distance is not symmetric (a query's window pairs against a stored signature), so it is not a packed hash
run through :mod:`.distances`: each worker sends back the original's signature and, for the original and every
copy, the query (54 hashes and the stored window each is paired with); here every query is scored against every
original with the same compiled scan the index uses, and the scores go to the same metrics as a hash's distances
(true pairs: a copy against its own original; distinct pairs: any original or copy against another group's
original), in bits of 64.
"""

from __future__ import annotations

import numpy as np

from matchdb.evaluation.distances import Distinct
from matchdb.evaluation.geometric_hashes import NAME, SIGNATURE, unpack_query
from matchdb.geometric import scan
from matchdb.geometric.query import NBITS
from matchdb.geometric.windows import NWINDOWS


def distances(
    originals: list[dict[str, list[bytes]]],
    copies: list[dict[str, dict[str, list[bytes]]]],
    transforms: tuple[str, ...],
    groups: np.ndarray,
) -> tuple[np.ndarray, Distinct, np.ndarray]:
    """(true (n, T) with -1 for failed copies, distinct-pair distances, copy_valid (n, T))."""
    n, t = len(originals), len(transforms)
    sigs = np.zeros((max(1, n), NWINDOWS), np.uint64)
    for i, original in enumerate(originals):
        sigs[i] = np.frombuffer(original[SIGNATURE][0], "<u8")
    ids = np.arange(len(sigs), dtype=np.int64)
    true = np.full((n, t), -1, np.int32)
    valid = np.zeros((n, t), bool)
    histogram = np.zeros(NBITS + 1, np.int64)
    closest = np.full((n, n), NBITS + 1, np.int16)

    def score(source: int, data: bytes) -> np.ndarray:
        found = scan.scores(sigs, ids, n, unpack_query(data)).astype(np.int16)
        keep = groups != groups[source]
        histogram[:] += np.bincount(found[keep], minlength=NBITS + 1)
        np.minimum(closest[source], np.where(keep, found, NBITS + 1).astype(np.int16), out=closest[source])
        return found

    for i in range(n):
        score(i, originals[i][NAME][0])
        for j, name in enumerate(transforms):
            copy = copies[i].get(name)
            if copy is not None:
                true[i, j] = score(i, copy[NAME][0])[i]
                valid[i, j] = True
    return true, Distinct(histogram, closest), valid


__all__ = ["NAME", "distances"]
