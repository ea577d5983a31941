"""What a geometric query compares: its own window hashes, each paired with the stored window it should match.

The pairs cover the edits a hash cannot see:

* the query is a crop of the stored image: the query's whole frame against every stored window (centred, one-sided,
  corner and one-axis crops at several scales);
* the stored image is a crop of the query: the query's centred windows against the stored whole frame;
* an overlay in a corner (a logo, a text watermark): each query corner window against the same stored one;
* a small turn: the query turned back by +-2/4/6 degrees. With black corners (same canvas) the turned-back query
  covers the original's centre up to a scale ``s`` (the largest rectangle of the frame's shape inside the turned
  frame), so its centred window of a stored scale ``c <= s`` is the stored centred window ``c``. With the corners
  cropped away (the copy is that rectangle), the turned-back query's window ``t`` is the stored scale ``t * s``.

The score of a stored image is the smallest Hamming distance over the pairs: one number in bits (of 64), which the
API gives as a percentage like any hash distance, so a ``range`` applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from matchdb.geometric.windows import (
    CENTRED_INDEX,
    CENTRED_SCALES,
    NWINDOWS,
    STORED,
    WHOLE,
    Box,
    centred,
    corners,
    window_hashes,
)

NBITS = 64
TURNS = (2.0, -2.0, 4.0, -4.0, 6.0, -6.0)
_INNER = (0.90, 0.80, 0.70)  # query centred windows matched against the stored whole frame
#: Each corner of the query against the same corner stored: an overlay (logo, text) in one corner of the query
#: leaves the other corners' windows untouched.
_SAME_CORNERS = tuple(STORED.index(box) for box in corners(0.80))
_TURN_SLACK = 1.0  # degrees: a true turn between two tried ones is up to 1 degree further


@dataclass(frozen=True)
class Query:
    """``hashes[i]`` is to be compared with stored window ``windows[i]``."""

    hashes: npt.NDArray[np.uint64]
    windows: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.hashes)


def inner_scale(degrees: float, aspect: float) -> float:
    """Scale of the largest centred rectangle of the frame's shape inside the frame turned by ``degrees``."""
    theta = math.radians(abs(degrees))
    return 1.0 / (math.cos(theta) + max(aspect, 1.0 / aspect) * math.sin(theta))


def _largest_stored_at_most(scale: float) -> float | None:
    fitting = [s for s in CENTRED_SCALES if s <= scale]
    return max(fitting) if fitting else None


def turn_pairs(degrees: float, aspect: float) -> list[tuple[float, float]]:
    """(query window scale after turning back, stored centred scale) for the two kinds of turned copy."""
    reach = inner_scale(abs(degrees) + _TURN_SLACK, aspect)
    pairs = []
    black = _largest_stored_at_most(reach)
    if black is not None:
        pairs.append((black, black))
    cropped = _largest_stored_at_most(reach * reach)
    if cropped is not None:
        pairs.append((min(1.0, cropped / reach), cropped))
    return pairs


def query_of(image: Image.Image) -> Query:
    """The window hashes of a query (a working grey image, see :func:`windows.working_grey`) and their pairs."""
    aspect = image.width / max(1, image.height)
    boxes: list[Box] = [(0.0, 0.0, 1.0, 1.0)] + [centred(s) for s in _INNER] + [STORED[w] for w in _SAME_CORNERS]
    windows = [WHOLE] + [WHOLE] * len(_INNER) + list(_SAME_CORNERS)
    hashes = [window_hashes(image, boxes)]
    for degrees in TURNS:
        turned = image.rotate(degrees, Image.Resampling.BICUBIC, expand=False, fillcolor=0)
        pairs = turn_pairs(degrees, aspect)
        hashes.append(window_hashes(turned, [centred(q) for q, _ in pairs]))
        windows.extend(CENTRED_INDEX[s] for _, s in pairs)
    whole = hashes[0][:1]
    all_hashes = np.concatenate([np.repeat(whole, NWINDOWS - 1), *hashes])
    all_windows = list(range(1, NWINDOWS)) + windows
    return Query(np.ascontiguousarray(all_hashes, np.uint64), np.asarray(all_windows, np.int64))
