"""The numpy tree's static layout and how it is built: records in tree order, and the filters over them (for long
hashes a pivot tree and block tables for near radii, for one-word hashes block tables). The reasons are in
:mod:`matchdb.index.numpy_tree`; the block tables are :mod:`matchdb.index.blocks`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning
from matchdb.index.blocks import BlockTables, build_tables, first_table_order
from matchdb.index.kernels import Ints, Words, first_of_each, row_counts, stable_order
from matchdb.index.liveness import Liveness


class WalkHistory:
    """Whether the pivot walk has been worth it for this tree's recent k-nearest queries.

    On hashes that nothing prunes (uniformly random ones, or a query far from everything in a collection without
    clusters) the walk reads every level's pivots and the first leaves, then gives up and scans anyway: a fifth of
    the query's time spent for nothing. After ``tuning.PIVOT_FUTILE_WALKS`` walks in a row that ended in a scan, the
    search scans straight away, and walks again every ``tuning.PIVOT_PROBE_EVERY`` th query to notice when that
    changes. It only chooses a path: both give the exact answer, so a race on these counters (threads share a tree)
    costs at most a slower query."""

    def __init__(self) -> None:
        self.scanned_in_a_row = 0
        self.skipped = 0

    def worth_walking(self) -> bool:
        if self.scanned_in_a_row < tuning.PIVOT_FUTILE_WALKS:
            return True
        self.skipped += 1
        return self.skipped % tuning.PIVOT_PROBE_EVERY == 0

    def walked(self, ended_in_scan: bool) -> None:
        self.scanned_in_a_row = self.scanned_in_a_row + 1 if ended_in_scan else 0


@dataclass(frozen=True)
class PivotTree:
    """The pivot tree over long hashes (see the module docstring); node ids are per level."""

    pivots: list[Words]  # per level: (nodes, nwords) pivot words
    pivot_pos: list[Ints]  # per level: tree position of each pivot record
    lo_keys: list[Ints]  # per inner level: parent * (nbits + 1) + lowest distance of each child (sorted)
    hi_keys: list[Ints]  # per inner level: parent * (nbits + 1) + highest distance of each child (sorted)
    leaf_starts: Ints  # (leaves + 1,): where each leaf's records start
    leaf_distance: npt.NDArray[np.uint16]  # (n,): each record's distance to its leaf's pivot
    walks: WalkHistory = field(default_factory=WalkHistory, compare=False, repr=False)

    @property
    def nbytes(self) -> int:
        arrays: list[npt.NDArray[Any]] = [self.leaf_distance, self.leaf_starts, *self.pivots, *self.pivot_pos]
        return sum(a.nbytes for a in [*arrays, *self.lo_keys, *self.hi_keys])


@dataclass(frozen=True)
class Tree:
    """The static part: the records in tree order, their keys and tombstones, and the filter over them."""

    nbits: int
    words: Words  # (n, nwords), tree order
    keys: npt.NDArray[np.signedinteger]  # (n,), tree order (int32 when they fit; read them through key_at)
    alive: Liveness  # tombstones as of one generation (a new Tree shares every array but this: see liveness)
    sorted_keys: npt.NDArray[np.signedinteger]  # keys, sorted, to find a key's position (int32 when they fit)
    sorted_pos: npt.NDArray[np.int32]  # position in tree order of each of sorted_keys
    pivot: PivotTree | None
    blocks: BlockTables

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        own: list[npt.NDArray[Any]] = [self.keys, self.sorted_keys, self.sorted_pos]
        if self.blocks.words is None:  # else the words are a view of the first table's copies
            own.append(self.words)
        extra = (self.pivot.nbytes if self.pivot else 0) + self.blocks.nbytes + self.alive.nbytes
        return sum(a.nbytes for a in own) + extra

    def key_at(self, positions: Ints) -> Ints:
        """The keys at these tree positions, as int64 (what every answer carries)."""
        return self.keys[positions].astype(np.int64)

    def positions_of(self, keys: Ints) -> Ints:
        """The tree position of each key (live or a tombstone), -1 where the tree has none."""
        out = np.full(len(keys), -1, np.int64)
        if not self.size:
            return out
        limits = np.iinfo(self.sorted_keys.dtype)
        fits = np.flatnonzero((keys >= limits.min) & (keys <= limits.max))
        wanted = keys[fits].astype(self.sorted_keys.dtype)
        found = np.minimum(np.searchsorted(self.sorted_keys, wanted), self.size - 1)
        hit = self.sorted_keys[found] == wanted
        out[fits[hit]] = self.sorted_pos[found[hit]]
        return out


def _pivot_distances(words: Words, owner: Ints, pivots: Words) -> Ints:
    """Distance of each row of ``words`` to the pivot of its node (``owner[i]``), in chunks."""
    out = np.empty(len(words), np.int64)
    nwords = words.shape[1]
    for start in range(0, len(words), tuning.CHUNK_ROWS):
        block = words[start : start + tuning.CHUNK_ROWS]
        out[start : start + len(block)] = row_counts(
            (block ^ np.take(pivots, owner[start : start + len(block)], axis=0)).reshape(-1), nwords
        )
    return out


def build(nbits: int, words: Words, keys: Ints, seed: int) -> Tree:
    """Order the records and build the filters: for long hashes the pivot tree (which orders them) and block tables
    over that order, for one-word hashes block tables alone."""
    pivot: PivotTree | None = None
    if words.shape[1] > 1:
        words, keys, pivot = _build_pivot_tree(nbits, words, keys, seed)
    else:  # in the first table's order: its copies of the hashes are then the tree's
        order = first_table_order(nbits, words)
        words, keys = words[order], keys[order]
    words = np.ascontiguousarray(words)
    blocks = build_tables(nbits, words, copies=words.shape[1] == 1)
    if blocks.words is not None:
        words = blocks.words[: len(keys)].reshape(len(keys), 1)
    sorted_pos = stable_order(keys)
    sorted_keys = keys[sorted_pos]
    if len(keys) and int(sorted_keys[0]) >= -(2**31) and int(sorted_keys[-1]) < 2**31:
        # Row ids of a collection below two billion (all of them, in practice): half the memory per key.
        sorted_keys = sorted_keys.astype(np.int32)
        keys = keys.astype(np.int32)
    return Tree(
        nbits=nbits,
        words=words,
        keys=keys,
        alive=Liveness(),
        sorted_keys=sorted_keys,
        sorted_pos=sorted_pos.astype(np.int32),
        pivot=pivot,
        blocks=blocks,
    )


def _build_pivot_tree(nbits: int, words: Words, keys: Ints, seed: int) -> tuple[Words, Ints, PivotTree]:
    """The pivot tree, one vectorised pass per level: pick pivots, sort each node by distance, cut children."""
    n = len(keys)
    span = nbits + 1
    rng = np.random.default_rng(seed)
    inner = math.ceil(math.log(n / tuning.LEAF_SIZE, tuning.FANOUT)) if n > tuning.LEAF_SIZE else 0
    fanout = math.ceil((n / tuning.LEAF_SIZE) ** (1 / inner)) if inner else 1  # as even as the levels allow
    levels = inner + 1
    starts = np.zeros(1, np.int64)
    ends = np.full(1, n, np.int64)
    pivots: list[Words] = []
    pivot_keys: list[Ints] = []
    lo_keys: list[Ints] = []
    hi_keys: list[Ints] = []
    sort_key = np.zeros(n, np.int64)
    perm = np.arange(n, dtype=np.int64)  # tree position -> row of ``words``: the rows move once, at the end
    owner_of_row = np.zeros(n, np.int64)
    for level in range(levels if n else 0):
        sizes = ends - starts
        nodes = len(starts)
        chosen = perm[starts + (rng.random(nodes) * sizes).astype(np.int64)]
        pivots.append(np.ascontiguousarray(words[chosen]))
        pivot_keys.append(keys[chosen])
        owner = np.repeat(np.arange(nodes, dtype=np.int64), sizes)
        owner_of_row[perm] = owner
        sort_key = owner * span + _pivot_distances(words, owner_of_row, pivots[-1])[perm]
        order = stable_order(sort_key)
        perm = perm[order]
        sort_key = sort_key[order]
        if level == levels - 1:
            break
        # cut each node into up to tuning.FANOUT children at quantiles, each cut moved back to where its distance starts
        targets = (starts[:, None] + (sizes[:, None] * np.arange(1, fanout)[None, :]) // fanout).ravel()
        targets = np.searchsorted(sort_key, sort_key[targets], side="left")
        bounds = np.concatenate([starts, ends, targets])
        bounds = bounds[first_of_each(bounds)]
        starts, ends = bounds[:-1], bounds[1:]
        lo_keys.append(sort_key[starts])
        hi_keys.append(sort_key[ends - 1])
    words = np.take(words, perm, axis=0)
    keys = keys[perm]
    by_key = stable_order(keys)
    sorted_keys = keys[by_key]
    pivot_pos = [by_key[np.searchsorted(sorted_keys, k)] for k in pivot_keys]
    leaf_starts = np.append(starts, n) if n else np.zeros(1, np.int64)
    leaf_distance = (sort_key % span).astype(np.uint16)
    return words, keys, PivotTree(pivots, pivot_pos, lo_keys, hi_keys, leaf_starts, leaf_distance)
