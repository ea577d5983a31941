"""Near-duplicate groups, greedy around kept images, with exact radius searches in the project's Hamming index.

Why greedy and not connected components (imagededup's "every pair within the threshold", which users then chain):
near-duplicate is not transitive. A chain a~b~c~d of small edits, or a run of similar frames, can link images that
are nowhere near each other, and a component would then have one of them "removed" as a copy of another it does not
resemble. Here every removed image is within ``range`` of the image kept in its group, which is what makes deleting
it safe: the images are visited best first by the keep policy (largest, oldest, or input order); an image not yet
taken is kept and takes every image not yet taken within range of it. Like ``remove_duplicates`` (API.md), with the
policy's order in place of the request's, so the kept image is also the best of its group.

Only kept images search: an image taken as a copy never needs its own neighbours, so a folder costs one exact radius
search (:meth:`~matchdb.index.NumpyTreeIndex.search_arrays`, vectorised inside) per kept image: 100k images are at
most 100k numpy-backed calls, never 10^10 Python comparisons, and no list of every pair within range is built
(clusters of similar shots would make it quadratic). With ``dihedral`` the kept image searches with each of its 8
orientations, as the query of ``rank_images`` does, and a copy's distance is its smallest over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from matchdb.dedupe.collect import HashTable
from matchdb.dedupe.provenance import ORIGINAL_FORMATS
from matchdb.geometric import GeometricIndex
from matchdb.hashing import NBITS
from matchdb.hashing.dihedral import TRANSFORMS
from matchdb.index import NumpyTreeIndex

#: Default ``--range`` per hash type, in API.md's unit (percent of differing bits, inclusive against the value shown
#: with one decimal): the thresholds at a false-match rate of 1e-4 measured by ``matchdb eval`` on the corpus photos
#: (docs/accuracy.md, "Thresholds and the recommended range"). At bmh1 2.1 every JPEG copy down to quality 50 and
#: >= 99.3% of 25% downscales are found; phash 14.1 matches the same pairs as any range up to 15.5.
DEFAULT_RANGE: dict[str, float] = {"bmh1": 2.1, "phash": 14.1}
#: ``--geometric``: its threshold at FMR 1e-4 on the shared corpus (docs/accuracy.md, geometric matching).
GEOMETRIC_RANGE = 10.9

KeepPolicy = Literal["largest", "oldest", "first"]
KEEP_POLICIES: tuple[KeepPolicy, ...] = ("largest", "oldest", "first")

Rows = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Member:
    """An image taken as a copy: its table row, its distance to the kept image, and the orientation of the kept
    image it matches (an entry of ``TRANSFORMS``: ``"identity"`` unless ``dihedral`` found it mirrored or turned)."""

    row: int
    bits: int
    transform: str


@dataclass(frozen=True)
class Group:
    kept: int  # table row of the image kept
    removed: tuple[Member, ...]  # nearest first, then input order


def _largest_criteria(table: HashTable, rows: Rows) -> list[tuple[str, Rows]]:
    """The "largest" policy's criteria for ``rows``, most significant first, each as values where more is better
    (the reasons are in :mod:`matchdb.dedupe.provenance`): colour, pixels, camera tags, original format, bytes."""
    original = np.array([table.formats[row] in ORIGINAL_FORMATS for row in rows.tolist()], np.int64)
    return [
        ("colour", table.colour[rows].astype(np.int64)),
        ("pixels", table.width[rows] * table.height[rows]),
        ("camera", table.camera[rows].astype(np.int64)),
        ("format", original),
        ("bytes", table.nbytes[rows]),
    ]


def keep_order(table: HashTable, policy: KeepPolicy) -> Rows:
    """Readable rows best first. largest: colour before greyscale, then most pixels, then camera EXIF tags, then an
    original format (JPEG, HEIF, TIFF) before a conversion (PNG, WebP, GIF, BMP), then most bytes; oldest: earliest
    modification time (URLs, which have none, after every file); first: input order. Input order breaks every tie."""
    rows = np.flatnonzero(table.ok)
    if policy == "largest":
        criteria = [values for _name, values in _largest_criteria(table, rows)]
        order = np.lexsort((rows, *[-values for values in reversed(criteria)]))
    elif policy == "oldest":
        mtime = table.mtime[rows]
        order = np.lexsort((rows, np.where(np.isnan(mtime), np.inf, mtime)))
    elif policy == "first":
        order = np.arange(len(rows))
    else:
        raise ValueError(f"unknown keep policy {policy!r}; expected one of {', '.join(KEEP_POLICIES)}")
    return rows[order]


def why_kept(table: HashTable, group: Group, policy: KeepPolicy) -> str:
    """Why the kept image of ``group`` won, in words: the first criterion of the policy on which it beats the best
    of the others."""
    if policy == "first":
        return "given first"
    if policy == "oldest":
        return "oldest modification time" if not math.isnan(float(table.mtime[group.kept])) else "given first"
    rows = np.array([group.kept, *[m.row for m in group.removed]], np.int64)
    criteria = _largest_criteria(table, rows)
    runner_up = int(np.lexsort((rows[1:], *[-values[1:] for _name, values in reversed(criteria)]))[0]) + 1
    other = int(rows[runner_up])
    for name, values in criteria:
        if values[0] > values[runner_up]:
            return _REASONS[name](table, group.kept, other)
    return "given first (the copies tie on every criterion)"


_REASONS: dict[str, Callable[[HashTable, int, int], str]] = {
    "colour": lambda t, kept, other: "colour (a copy is greyscale)",
    "pixels": lambda t, kept, other: (
        f"more pixels ({t.width[kept]}x{t.height[kept]} against {t.width[other]}x{t.height[other]})"
    ),
    "camera": lambda t, kept, other: "camera EXIF tags (the copy has none)",
    "format": lambda t, kept, other: f"original format {t.formats[kept]} (the copy is {t.formats[other] or 'unknown'})",
    "bytes": lambda t, kept, other: f"more bytes ({t.nbytes[kept]:,} against {t.nbytes[other]:,})",
}


def group_duplicates(table: HashTable, max_bits: int, policy: KeepPolicy) -> list[Group]:
    """Greedy groups around kept images (module doc) within ``max_bits`` differing bits, in the order their kept
    images were visited; an image that is nobody's copy and has none is in no group."""
    rows = np.flatnonzero(table.ok)
    order = keep_order(table, policy)  # checks the policy even when there is nothing to group
    if len(rows) < 2 or max_bits < 0:
        return []
    index = NumpyTreeIndex(NBITS[table.kind])
    index.bulk_load_packed(rows, table.packed[rows, 0])
    taken = np.zeros(len(table.sources), np.bool_)
    groups: list[Group] = []
    for row in order.tolist():
        if taken[row]:
            continue
        taken[row] = True
        near, bits, orientation = _untaken_near(index, table.packed[row], max_bits, taken)
        if len(near):
            taken[near] = True
            members = zip(near.tolist(), bits.tolist(), orientation.tolist(), strict=True)
            groups.append(Group(row, tuple(Member(m, b, TRANSFORMS[o]) for m, b, o in members)))
    return groups


def _untaken_near(
    index: NumpyTreeIndex, queries: npt.NDArray[np.uint8], max_bits: int, taken: npt.NDArray[np.bool_]
) -> tuple[Rows, Rows, Rows]:
    """(rows, bits, orientation) of the untaken images within ``max_bits`` of any of ``queries`` (the orientations
    of one image), each row once at its smallest distance (then first orientation), sorted by (bits, row)."""
    found = []
    for variant, query in enumerate(queries):
        bits, keys = index.search_arrays(query, max_bits)
        free = ~taken[keys]
        if free.any():
            found.append((keys[free], bits[free], np.full(int(free.sum()), variant, np.int64)))
    if not found:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    if len(found) == 1:
        return found[0]  # one search's answer is sorted by (bits, row) already
    keys, bits, orientation = (np.concatenate(column) for column in zip(*found, strict=True))
    best = np.lexsort((orientation, bits, keys))
    keys, bits, orientation = keys[best], bits[best], orientation[best]
    first = np.ones(len(keys), np.bool_)
    first[1:] = keys[1:] != keys[:-1]
    keys, bits, orientation = keys[first], bits[first], orientation[first]
    ranked = np.lexsort((keys, bits))
    return keys[ranked], bits[ranked], orientation[ranked]


def group_geometric(table: HashTable, max_bits: int, policy: KeepPolicy) -> list[Group]:
    """:func:`group_duplicates` by the geometric score (``--geometric``): made symmetric (the smaller of each image's
    query against the other's signature), so a crop and its full image group whichever is kept. Every image's query
    scans every signature: meant for thousands of images, not millions."""
    rows = np.array(sorted(table.geometric), np.int64)
    order = keep_order(table, policy)
    if len(rows) < 2 or max_bits < 0:
        return []
    index = GeometricIndex()
    index.add_many(rows, np.stack([table.geometric[row].words for row in rows.tolist()]))
    near: dict[tuple[int, int], int] = {}
    for row in rows.tolist():
        for other, bits in index.search(table.geometric[row].query, max_bits):
            if other != row:
                pair = (min(row, other), max(row, other))
                near[pair] = min(bits, near.get(pair, bits))
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for (a, b), bits in near.items():
        neighbours.setdefault(a, []).append((bits, b))
        neighbours.setdefault(b, []).append((bits, a))
    taken = np.zeros(len(table.sources), np.bool_)
    groups: list[Group] = []
    for row in order.tolist():
        if taken[row] or row not in table.geometric:
            continue
        taken[row] = True
        members = sorted((bits, other) for bits, other in neighbours.get(row, []) if not taken[other])
        for _, other in members:
            taken[other] = True
        if members:
            groups.append(Group(row, tuple(Member(other, bits, TRANSFORMS[0]) for bits, other in members)))
    return groups


def removed_rows(groups: Sequence[Group]) -> list[int]:
    return [member.row for group in groups for member in group.removed]
