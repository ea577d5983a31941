"""The numpy tree's static layout and how it is built: records in tree order, and the filter over them (a pivot tree
for long hashes, block tables for one-word hashes). The reasons for both are in :mod:`matchdb.index.numpy_tree`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning
from matchdb.index.kernels import Bools, Ints, Words, first_of_each


@dataclass(frozen=True)
class PivotTree:
    """The pivot tree over long hashes (see the module docstring); node ids are per level."""

    pivots: list[Words]  # per level: (nodes, nwords) pivot words
    pivot_pos: list[Ints]  # per level: tree position of each pivot record
    lo_keys: list[Ints]  # per inner level: parent * (nbits + 1) + lowest distance of each child (sorted)
    hi_keys: list[Ints]  # per inner level: parent * (nbits + 1) + highest distance of each child (sorted)
    leaf_starts: Ints  # (leaves + 1,): where each leaf's records start
    leaf_distance: npt.NDArray[np.uint16]  # (n,): each record's distance to its leaf's pivot

    @property
    def nbytes(self) -> int:
        arrays: list[npt.NDArray[Any]] = [self.leaf_distance, self.leaf_starts, *self.pivots, *self.pivot_pos]
        return sum(a.nbytes for a in [*arrays, *self.lo_keys, *self.hi_keys])


@dataclass(frozen=True)
class BlockTables:
    """Short hashes (one word): the bits cut into blocks, the records bucketed by each block's exact value.

    All tables live in two arrays of ``m * n`` rows: table t's records in its block-value order are rows
    ``t * n ..``, with their hashes in ``words`` (a copy per table, so a bucket's hashes are read in one run
    rather than gathered one by one) and their tree positions in ``order``; bucket ``v`` of table t is rows
    ``offsets[t * (2**width + 1) + v] : ...[v + 1]``. Table 0's order is the tree order, so the tree's words are
    a view of its rows.
    """

    widths: list[int]
    shifts: list[int]
    words: Words  # (m * n,)
    order: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.signedinteger]
    shift_array: Words  # the shifts and width masks as arrays, to cut a query into blocks in two operations
    mask_array: Words
    plans: dict[tuple[int, int], tuple[Ints, Ints, Ints]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.order.nbytes + self.offsets.nbytes

    def plan(self, low: int, high: int) -> tuple[Ints, Ints, Ints]:
        """For steps ``low..high``: the XOR masks to apply, the table of each, and each table's offset base.

        Step ``t`` is table ``t % m`` at ``t // m`` differing bits (see ``_block_hits``). Plans depend only on the
        steps, so they are made once per tree and kept.
        """
        cached = self.plans.get((low, high))
        if cached is not None:
            return cached
        count = len(self.widths)
        span = (1 << max(self.widths)) + 1
        masks: list[Ints] = []
        tables: list[Ints] = []
        for table, width in enumerate(self.widths):
            weight_low = max(0, -(-(low - table) // count))  # this table's weights: step = table + count * weight
            weight_high = min(width, (high - table) // count) if high >= table else -1
            if weight_high < weight_low:
                continue
            order, starts = _masks(width)
            masks.append(order[starts[weight_low] : starts[weight_high + 1]])
            tables.append(np.full(len(masks[-1]), table, np.int64))
        all_masks = np.concatenate(masks) if masks else np.empty(0, np.int64)
        all_tables = np.concatenate(tables) if tables else np.empty(0, np.int64)
        plan = (all_masks, all_tables, all_tables * span)
        if len(self.plans) < 4096:
            self.plans[(low, high)] = plan
        return plan


@dataclass(frozen=True)
class Tree:
    """The static part: the records in tree order, their keys and tombstones, and the filter over them."""

    nbits: int
    words: Words  # (n, nwords), tree order
    keys: Ints  # (n,), tree order
    alive: Bools  # (n,), tombstones are False; changed in place
    sorted_keys: Ints  # keys, sorted, to find a key's position
    sorted_pos: npt.NDArray[np.int32]  # position in tree order of each of sorted_keys
    pivot: PivotTree | None
    blocks: BlockTables | None

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        own = [self.keys, self.alive, self.sorted_keys, self.sorted_pos]
        if self.blocks is None:  # with blocks, the words are a view of the tables' words
            own.append(self.words)
        extra = (self.pivot.nbytes if self.pivot else 0) + (self.blocks.nbytes if self.blocks else 0)
        return sum(a.nbytes for a in own) + extra


def _pivot_distances(words: Words, owner: Ints, pivots: Words) -> Ints:
    """Distance of each row of ``words`` to the pivot of its node (``owner[i]``), in chunks."""
    out = np.empty(len(words), np.int64)
    nwords = words.shape[1]
    for start in range(0, len(words), 1 << 16):
        block = words[start : start + (1 << 16)]
        counts = np.bitwise_count(block ^ np.take(pivots, owner[start : start + len(block)], axis=0))
        out[start : start + len(block)] = counts[:, 0] if nwords == 1 else counts.sum(axis=1, dtype=np.int64)
    return out


def build(nbits: int, words: Words, keys: Ints, seed: int) -> Tree:
    """Order the records and build the filter: block tables for one-word hashes, else the pivot tree."""
    pivot: PivotTree | None = None
    blocks: BlockTables | None = None
    if words.shape[1] == 1:
        words, keys, blocks = _build_blocks(nbits, words, keys)
    else:
        words, keys, pivot = _build_pivot_tree(nbits, words, keys, seed)
    sorted_pos = np.argsort(keys, kind="stable")
    return Tree(
        nbits=nbits,
        words=np.ascontiguousarray(words),
        keys=keys,
        alive=np.ones(len(keys), np.bool_),
        sorted_keys=keys[sorted_pos],
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
    for level in range(levels if n else 0):
        sizes = ends - starts
        nodes = len(starts)
        chosen = starts + (rng.random(nodes) * sizes).astype(np.int64)
        pivots.append(np.ascontiguousarray(words[chosen]))
        pivot_keys.append(keys[chosen])
        owner = np.repeat(np.arange(nodes, dtype=np.int64), sizes)
        sort_key = owner * span + _pivot_distances(words, owner, pivots[-1])
        order = np.argsort(sort_key, kind="stable")
        words = np.take(words, order, axis=0)
        keys = keys[order]
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
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    pivot_pos = [by_key[np.searchsorted(sorted_keys, k)] for k in pivot_keys]
    leaf_starts = np.append(starts, n) if n else np.zeros(1, np.int64)
    leaf_distance = (sort_key % span).astype(np.uint16)
    return words, keys, PivotTree(pivots, pivot_pos, lo_keys, hi_keys, leaf_starts, leaf_distance)


def _build_blocks(nbits: int, words: Words, keys: Ints) -> tuple[Words, Ints, BlockTables]:
    """Bucket the records by each block's value. Blocks are about log2(n) bits wide (8 to 16): buckets then hold a
    few records each, and the bucket offsets stay small next to the records."""
    n = len(keys)
    target = min(tuning.BLOCK_BITS, max(8, math.ceil(math.log2(max(n, 2)))))
    count = math.ceil(nbits / target)
    widths = [nbits // count + (1 if b < nbits % count else 0) for b in range(count)]
    shifts = [sum(widths[:b]) for b in range(count)]
    span = (1 << max(widths)) + 1
    column = words[:, 0]
    first_block = (column >> np.uint64(shifts[0])) & np.uint64((1 << widths[0]) - 1)
    order = np.argsort(first_block, kind="stable")
    column, keys = column[order], keys[order]
    all_words = np.empty(count * n, np.uint64)
    all_order = np.empty(count * n, np.int32)
    offsets: npt.NDArray[np.signedinteger] = np.empty(count * span, np.int32 if count * n < 2**31 else np.int64)
    for table, (width, shift) in enumerate(zip(widths, shifts, strict=True)):
        values = ((column >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.intp)
        counts = np.bincount(values, minlength=span - 1)
        offsets[table * span : (table + 1) * span] = table * n + np.concatenate([[0], np.cumsum(counts)])
        table_order = np.argsort(values, kind="stable") if table else np.arange(n)
        all_order[table * n : (table + 1) * n] = table_order
        all_words[table * n : (table + 1) * n] = column[table_order]
    shift_array = np.array(shifts, np.uint64)
    mask_array = np.array([(1 << w) - 1 for w in widths], np.uint64)
    tables = BlockTables(widths, shifts, all_words, all_order, offsets, shift_array, mask_array)
    return all_words[:n].reshape(n, 1), keys, tables


@lru_cache(maxsize=64)
def _masks(width: int) -> tuple[Ints, Ints]:
    """Every ``width``-bit value ordered by popcount, and where each popcount starts (``starts[w]``)."""
    values = np.arange(1 << width, dtype=np.int64)
    weight = np.bitwise_count(values)
    order = np.argsort(weight, kind="stable")
    starts = np.searchsorted(weight[order], np.arange(width + 2))
    return order, starts.astype(np.int64)
