"""Hashes of the 8 flips and rotations of an image, for the opt-in ``dihedral`` matching mode.

Plain visual hashes are not invariant to mirroring or 90-degree turns. Rather than a second hash family, the query
is hashed in all 8 orientations of the dihedral group and each candidate keeps its smallest distance. The variants
cost no pixel copy: the 8 EXIF orientations *are* that group, so a variant is the decoded buffer seen under a
composed orientation, and hashing it runs the exact pipeline a truly flipped file would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from matchdb.hashing.decode import Pixels, _orient
from matchdb.hashing.value import HASH_TYPES, VisualHash

# The group elements as functions on an (already oriented) view, in EXIF orientation order: identity, mirror,
# 180, flip, transpose, 90 cw, transverse, 90 ccw. Index 0 is the image itself.
TRANSFORMS = ("identity", "mirror", "rotate180", "flip", "transpose", "rotate90", "transverse", "rotate270")


def _compose_table() -> tuple[tuple[int, ...], ...]:
    """``table[o][t]`` = the orientation showing transform ``t`` applied to the view under orientation ``o``."""
    probe = np.arange(6).reshape(2, 3)
    views = {o: _orient(probe, o) for o in range(1, 9)}
    table = []
    for o in range(1, 9):
        row = []
        for t in range(1, 9):
            target = _orient(views[o], t)
            row.append(next(c for c in range(1, 9) if views[c].shape == target.shape and (views[c] == target).all()))
        table.append(tuple(row))
    return tuple(table)


_COMPOSE = _compose_table()


def dihedral_variants(pixels: Pixels) -> list[Pixels]:
    """The 8 orientations of ``pixels`` (index 0 is ``pixels`` itself), sharing its buffer."""
    row = _COMPOSE[pixels.orientation - 1]
    return [Pixels(pixels.buffer, row[t]) for t in range(8)]


def hash_dihedral(pixels: Pixels, kinds: Iterable[str] = HASH_TYPES) -> list[dict[str, VisualHash]]:
    """Hashes of every orientation of ``pixels``; element 0 equals :func:`matchdb.hashing.hash_pixels`."""
    from matchdb.hashing import hash_pixels  # local: the package imports this module's siblings first

    wanted = tuple(kinds)
    return [hash_pixels(variant, wanted) for variant in dihedral_variants(pixels)]
