"""An exact Hamming index that does its work in numpy: a pivot tree for long hashes, block tables for short ones.

Why: a BK-tree of Python nodes (pybktree) visits a large share of its nodes at useful radii, one interpreted
distance call each, and loses to a plain vectorised scan (issue 6). Here pruning is decided for a whole frontier
at once, and hashes are read as contiguous packed arrays: rows of ``nwords = ceil(nbits / 64)`` uint64 words, bit
``i`` of the hash in word ``i // 64`` at bit ``i % 64`` (the LSB-first packed bytes viewed as little-endian words).
Distances are XOR + ``np.bitwise_count`` (see ``_Distance`` for why it is not the one-liner).

Two filters, picked by the hash length, because they prune differently (measured on realistic hashes, see
``benchmarks/bench_index.py``):

- Long hashes (bmh1, 961 bits): the BK-tree's metric-tree idea. Unrelated bmh1 hashes lie anywhere from about 240
  to 640 bits apart, so a record's distance to a pivot says a lot. Every node has a pivot (one of its records);
  an inner node's records are sorted by their distance to it and cut, only between distinct distances, into up to
  ``FANOUT`` children, each holding a range ``[lo, hi]`` of distances. By the triangle inequality a record within
  ``r`` of the query ``q`` can only be in a child whose range meets ``[d(q, pivot) - r, d(q, pivot) + r]``: one
  run of consecutive children, found with ``searchsorted`` for the whole frontier at once. Each node owns one
  contiguous slice of the records. In a leaf (about ``LEAF_SIZE`` records) each record keeps its distance to the
  leaf's pivot (2 bytes), the last triangle-inequality test, applied before any hash is read.
- One-word hashes (phash, 64 bits): unrelated phash hashes are 25 to 37 bits apart, so one pivot rules out little
  (about half the records at radius 4). The bits are cut into ``m`` blocks of about 16 bits and the records
  bucketed by each block's exact value (multi-index hashing): a record within ``r`` bits has some block within
  ``r // m`` bits of the query's (pigeonhole), so a search reads only the buckets of the few block values that
  near, in ``m`` tables (details in ``_block_hits``).

When the filter would keep most records (large radii), or the collection is small (then the filter's fixed cost
of a few dozen numpy calls is more than a scan), the search scans the whole array instead, which is what a plain
numpy scan does, so it is never much slower than one.

k nearest: a search whose radius shrinks as it goes, the k-th best accepted distance found so far. In the pivot
tree, pivots are records, so each level's pivot distances are candidates too; the leaves nearest the query are
scanned first, then the rest, filtered with the radius as it stands. In the block tables, the radius grows one
bit per table at a time until the k-th best distance is certified (every record within it has been read). The
answer keeps every record within the k-th distance sorted by (bits, key), so ties at the k-th place go to the
smaller key (the record inserted first); ``accept`` is applied before k.

Changes: new records go to a small unsorted delta array that every search scans; deleted or replaced records
become tombstones (a boolean mask). Past a share of either, the next change or query rebuilds from the live
records. ``bulk_load`` into an empty index builds at once; into a non-empty one it only appends, and the next
query pays one rebuild (so a collection streamed in batches is built once, not once per batch). Readers never
lock: they take the current snapshot, and a rebuild swaps in a new one atomically; a lock orders the writers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from matchdb.index.base import Hit

Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Counts = npt.NDArray[Any]  # distances: uint8, uint16 or uint64 depending on the hash length

FANOUT = 16  # at most this many children per inner node (fewer when the distances do not spread)
LEAF_SIZE = 48  # target records per leaf
FIRST_LEAVES = 2048  # k nearest: records in the first leaves scanned, to tighten the radius early
BLOCK_BITS = 16  # bits per block of a one-word hash (at most; about log2(n), and at least 8)
CHUNK_ROWS = 4096  # rows per vectorised distance step: temporaries stay in the CPU cache ...
WORD_CHUNK_ROWS = 65536  # ... (for one-word hashes)
LINEAR_SHARE = 0.3  # scan everything when the pivot tree keeps more than this share of the records ...
LEAF_SCAN_SHARE = 0.85  # ... or its leaves, before their per-record filter, hold more than this share ...
BLOCK_LINEAR_SHARE = 0.1  # ... or the block tables this share (reading a bucket row costs more than scanning one)
# Below these many records a plain scan answers (radius search, k nearest): the filters' fixed cost is larger
# there. Measured break-even points on a 2-core AMD EPYC (benchmarks/bench_index.py data, subsets).
SMALL_BLOCKS = (30_000, 150_000)
SMALL_PIVOTS = (3_000, 100_000)
DELTA_MIN = 2048  # the delta may always hold this many records before a rebuild ...
DELTA_SHARE = 1 / 32  # ... or this share of the tree
DEAD_SHARE = 0.25  # rebuild once this share of the tree is tombstones
_LANES = np.uint64(0x00FF00FF00FF00FF)
_SUM_LANES = np.uint64(0x0001000100010001)


def _words_of_packed(packed: npt.NDArray[np.uint8], nwords: int) -> Words:
    """(n, nbytes) little-endian packed hashes -> C-contiguous (n, nwords) uint64 (zero padded)."""
    n, nbytes = packed.shape
    if nbytes == nwords * 8:
        return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False).reshape(n, nwords)
    padded = np.zeros((n, nwords * 8), np.uint8)
    padded[:, :nbytes] = packed
    return padded.view("<u8").astype(np.uint64, copy=False).reshape(n, nwords)


class _Distance:
    """Hamming distances from one query to many rows, vectorised and in cache-sized chunks.

    ``rows ^ q`` with ``q`` broadcast along a short last axis runs numpy's inner loop 16 words at a time; XOR
    against a tiled copy of ``q`` on the flattened rows is several times faster. Per-row sums of the byte counts
    are done with SWAR on uint64 lanes when ``nwords`` is a multiple of 8 (bmh1: 16 words), again to avoid a
    reduction along a short axis.
    """

    def __init__(self, query: Words) -> None:
        self.nwords = len(query)
        self.scalar = query[0]
        self.tiled = np.tile(query, CHUNK_ROWS) if self.nwords > 1 else query

    def __call__(self, rows: Words) -> Counts:
        """Distances of each row of ``rows`` ((m, nwords) C-contiguous) as an unsigned int array of length m."""
        m = len(rows)
        if self.nwords == 1:
            column = rows[:, 0]
            if m <= WORD_CHUNK_ROWS:
                counted: Counts = np.bitwise_count(column ^ self.scalar)
                return counted
            counts = np.empty(m, np.uint8)
            buffer = np.empty(WORD_CHUNK_ROWS, np.uint64)
            for start in range(0, m, WORD_CHUNK_ROWS):
                part = buffer[: min(WORD_CHUNK_ROWS, m - start)]
                np.bitwise_xor(column[start : start + len(part)], self.scalar, out=part)
                np.bitwise_count(part, out=counts[start : start + len(part)])
            return counts
        out = np.empty(m, np.uint16)
        for start in range(0, m, CHUNK_ROWS):
            block = rows[start : start + CHUNK_ROWS]
            out[start : start + len(block)] = self._block(block)
        return out

    def _block(self, block: Words) -> Counts:
        count = len(block)
        flat = block.reshape(-1) ^ self.tiled[: count * self.nwords]
        bytes_ = np.bitwise_count(flat).astype(np.uint8, copy=False)
        if self.nwords % 8:
            summed: Counts = bytes_.reshape(count, self.nwords).sum(axis=1, dtype=np.uint16)
            return summed
        lanes = bytes_.view(np.uint64)
        pairs = (lanes & _LANES) + ((lanes >> np.uint64(8)) & _LANES)  # four 16-bit lanes per word
        per_row = pairs.reshape(count, self.nwords // 8).sum(axis=1, dtype=np.uint64)
        added: Counts = (per_row * _SUM_LANES) >> np.uint64(48)  # add the four lanes
        return added


def _first_of_each(values: Ints) -> Ints:
    """Index of the first occurrence of each distinct value, in increasing order of the values.

    Sort-based: ``np.unique(..., return_index=True)`` is several times slower on these arrays with numpy 2.
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    fresh = np.empty(len(ordered), np.bool_)
    fresh[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=fresh[1:])
    first: Ints = order[fresh]
    return first


def _runs(starts: Ints, ends: Ints) -> Ints:
    """Concatenate ``arange(starts[i], ends[i])`` for every i, without a Python loop."""
    counts = ends - starts
    if not len(counts):
        return np.empty(0, np.int64)
    total = np.cumsum(counts)
    out: Ints = np.arange(int(total[-1]), dtype=np.int64) + np.repeat(starts - total + counts, counts)
    return out


@dataclass(frozen=True)
class _PivotTree:
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
class _BlockTables:
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
class _Tree:
    """The static part: the records in tree order, their keys and tombstones, and the filter over them."""

    nbits: int
    words: Words  # (n, nwords), tree order
    keys: Ints  # (n,), tree order
    alive: Bools  # (n,), tombstones are False; changed in place
    sorted_keys: Ints  # keys, sorted, to find a key's position
    sorted_pos: npt.NDArray[np.int32]  # position in tree order of each of sorted_keys
    pivot: _PivotTree | None
    blocks: _BlockTables | None

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


def _build(nbits: int, words: Words, keys: Ints, seed: int) -> _Tree:
    """Order the records and build the filter: block tables for one-word hashes, else the pivot tree."""
    pivot: _PivotTree | None = None
    blocks: _BlockTables | None = None
    if words.shape[1] == 1:
        words, keys, blocks = _build_blocks(nbits, words, keys)
    else:
        words, keys, pivot = _build_pivot_tree(nbits, words, keys, seed)
    sorted_pos = np.argsort(keys, kind="stable")
    return _Tree(
        nbits=nbits,
        words=np.ascontiguousarray(words),
        keys=keys,
        alive=np.ones(len(keys), np.bool_),
        sorted_keys=keys[sorted_pos],
        sorted_pos=sorted_pos.astype(np.int32),
        pivot=pivot,
        blocks=blocks,
    )


def _build_pivot_tree(nbits: int, words: Words, keys: Ints, seed: int) -> tuple[Words, Ints, _PivotTree]:
    """The pivot tree, one vectorised pass per level: pick pivots, sort each node by distance, cut children."""
    n = len(keys)
    span = nbits + 1
    rng = np.random.default_rng(seed)
    inner = math.ceil(math.log(n / LEAF_SIZE, FANOUT)) if n > LEAF_SIZE else 0
    fanout = math.ceil((n / LEAF_SIZE) ** (1 / inner)) if inner else 1  # as even as the levels allow
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
        # cut each node into up to FANOUT children at quantiles, each cut moved back to where its distance starts
        targets = (starts[:, None] + (sizes[:, None] * np.arange(1, fanout)[None, :]) // fanout).ravel()
        targets = np.searchsorted(sort_key, sort_key[targets], side="left")
        bounds = np.concatenate([starts, ends, targets])
        bounds = bounds[_first_of_each(bounds)]
        starts, ends = bounds[:-1], bounds[1:]
        lo_keys.append(sort_key[starts])
        hi_keys.append(sort_key[ends - 1])
    by_key = np.argsort(keys, kind="stable")
    sorted_keys = keys[by_key]
    pivot_pos = [by_key[np.searchsorted(sorted_keys, k)] for k in pivot_keys]
    leaf_starts = np.append(starts, n) if n else np.zeros(1, np.int64)
    leaf_distance = (sort_key % span).astype(np.uint16)
    return words, keys, _PivotTree(pivots, pivot_pos, lo_keys, hi_keys, leaf_starts, leaf_distance)


def _build_blocks(nbits: int, words: Words, keys: Ints) -> tuple[Words, Ints, _BlockTables]:
    """Bucket the records by each block's value. Blocks are about log2(n) bits wide (8 to 16): buckets then hold a
    few records each, and the bucket offsets stay small next to the records."""
    n = len(keys)
    target = min(BLOCK_BITS, max(8, math.ceil(math.log2(max(n, 2)))))
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
    tables = _BlockTables(widths, shifts, all_words, all_order, offsets, shift_array, mask_array)
    return all_words[:n].reshape(n, 1), keys, tables


@lru_cache(maxsize=64)
def _masks(width: int) -> tuple[Ints, Ints]:
    """Every ``width``-bit value ordered by popcount, and where each popcount starts (``starts[w]``)."""
    values = np.arange(1 << width, dtype=np.int64)
    weight = np.bitwise_count(values)
    order = np.argsort(weight, kind="stable")
    starts = np.searchsorted(weight[order], np.arange(width + 2))
    return order, starts.astype(np.int64)


@dataclass(frozen=True)
class _Snapshot:
    """What a reader needs, swapped as one reference: the tree and the delta's filled prefix."""

    tree: _Tree
    delta_words: Words  # (capacity, nwords); rows past ``delta_count`` are unused
    delta_keys: Ints
    delta_alive: Bools
    delta_count: int
    dead: int  # tombstones in the tree
    live: int


_NO_HITS: tuple[Ints, Ints] = (np.empty(0, np.int64), np.empty(0, np.int64))


class _Best:
    """The best k accepted candidates so far, sorted by (bits, key): the k-th one's bits bound the search."""

    def __init__(self, k: int, limit: int, accept: Callable[[int], bool] | None) -> None:
        self.k = k
        self.limit = limit
        self.accept = accept
        self.ids = np.empty(0, np.int64)  # tree position, or tree size + delta index
        self.bits = np.empty(0, np.int64)
        self.keys = np.empty(0, np.int64)

    @property
    def radius(self) -> int:
        return int(self.bits[-1]) if len(self.bits) >= self.k else self.limit

    def offer(self, ids: Ints, bits: Counts, keys: Ints) -> None:
        keep = bits <= self.radius
        if len(self.ids):
            keep &= ~np.isin(ids, self.ids)
        if not keep.any():
            return
        ids, bits, keys = ids[keep], bits[keep], keys[keep]
        first = _first_of_each(ids)  # a record can come twice (pivot and leaf, or two block tables)
        ids, keys = ids[first], keys[first]
        kept_bits: Ints = bits[first].astype(np.int64)
        order = np.lexsort((keys, kept_bits))
        order = self._accepted(order, kept_bits, keys) if self.accept is not None else order[: self.k]
        merged_ids = np.concatenate([self.ids, ids[order]])
        merged_bits = np.concatenate([self.bits, kept_bits[order]])
        merged_keys = np.concatenate([self.keys, keys[order]])
        best = np.lexsort((merged_keys, merged_bits))[: self.k]
        self.ids, self.bits, self.keys = merged_ids[best], merged_bits[best], merged_keys[best]

    def _accepted(self, order: Ints, bits: Ints, keys: Ints) -> Ints:
        """The first k accepted of ``order``, asking ``accept`` only until nothing better than the k-th is left."""
        assert self.accept is not None
        taken: list[int] = []
        if len(self.bits) < self.k:
            worst = (self.radius, int(np.iinfo(np.int64).max))
        else:
            worst = (int(self.bits[-1]), int(self.keys[-1]))
        for i in order.tolist():
            if (int(bits[i]), int(keys[i])) > worst:
                break
            if self.accept(int(keys[i])):
                taken.append(i)
                if len(taken) == self.k:
                    break
        return np.array(taken, np.int64)


class NumpyTreeIndex:
    """Exact Hamming search over (key, hash) pairs, behind the ``HammingIndex`` interface (see the module docstring).

    Beyond it: ``bulk_load_packed`` loads from packed bytes without Python ints, and ``search_arrays`` /
    ``nearest_arrays`` answer with numpy arrays (and take the query as packed bytes too), which skips building
    ``Hit`` tuples for large answers.
    """

    def __init__(self, nbits: int) -> None:
        if nbits <= 0:
            raise ValueError("nbits must be positive")
        self.nbits = nbits
        self.nwords = (nbits + 63) // 64
        self.packed_bytes = (nbits + 7) // 8
        self._lock = threading.RLock()
        self._builds = 0
        self._snap = self._fresh(_build(nbits, np.empty((0, self.nwords), np.uint64), np.empty(0, np.int64), 0))

    def _fresh(self, tree: _Tree) -> _Snapshot:
        capacity = max(64, DELTA_MIN)
        return _Snapshot(
            tree=tree,
            delta_words=np.zeros((capacity, self.nwords), np.uint64),
            delta_keys=np.zeros(capacity, np.int64),
            delta_alive=np.zeros(capacity, np.bool_),
            delta_count=0,
            dead=0,
            live=tree.size,
        )

    # ----- sizes -------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._snap.live

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (the tree, its structure and the delta)."""
        snap = self._snap
        return snap.tree.nbytes + snap.delta_words.nbytes + snap.delta_keys.nbytes + snap.delta_alive.nbytes

    @property
    def tombstones(self) -> int:
        snap = self._snap
        return snap.dead + int(snap.delta_count - snap.delta_alive[: snap.delta_count].sum())

    # ----- conversions -------------------------------------------------------------------------------------------

    def _words(self, value: int) -> Words:
        if value < 0 or value.bit_length() > self.nbits:
            raise ValueError(f"hash value does not fit in {self.nbits} bits")
        return np.frombuffer(value.to_bytes(self.nwords * 8, "little"), "<u8").astype(np.uint64)

    def _packed_words(self, packed: npt.NDArray[np.uint8]) -> Words:
        if packed.ndim != 2 or packed.shape[1] != self.packed_bytes or packed.dtype != np.uint8:
            raise ValueError(f"packed hashes must be an (n, {self.packed_bytes}) uint8 array")
        words = _words_of_packed(packed, self.nwords)
        spare = self.nwords * 64 - self.nbits
        if spare and len(words) and (words[:, -1] >> np.uint64(64 - spare)).any():
            raise ValueError(f"hash value does not fit in {self.nbits} bits")
        return words

    # ----- changes -----------------------------------------------------------------------------------------------

    def add(self, key: int, value: int) -> None:
        words = self._words(value)
        with self._lock:
            snap = self._snap
            tree_pos, delta_pos = self._locate(snap, key)
            if tree_pos >= 0 and np.array_equal(snap.tree.words[tree_pos], words):
                return
            if delta_pos >= 0 and np.array_equal(snap.delta_words[delta_pos], words):
                return
            snap = self._append(self._kill(snap, tree_pos, delta_pos), np.array([key], np.int64), words[None, :])
            self._snap = snap
            self._rebuild_if_due(snap)

    def remove(self, key: int) -> None:
        with self._lock:
            snap = self._snap
            tree_pos, delta_pos = self._locate(snap, key)
            if tree_pos < 0 and delta_pos < 0:
                return
            self._snap = snap = self._kill(snap, tree_pos, delta_pos)
            self._rebuild_if_due(snap)

    def bulk_load(self, items: Iterable[tuple[int, int]]) -> None:
        keys: list[int] = []
        chunks: list[bytes] = []
        size = self.packed_bytes
        for key, value in items:
            if value < 0 or value.bit_length() > self.nbits:
                raise ValueError(f"hash value does not fit in {self.nbits} bits")
            keys.append(key)
            chunks.append(value.to_bytes(size, "little"))
        packed = np.frombuffer(b"".join(chunks), np.uint8).reshape(len(keys), size)
        self.bulk_load_packed(np.array(keys, np.int64), packed)

    def bulk_load_packed(self, keys: npt.ArrayLike, packed: npt.NDArray[np.uint8]) -> None:
        """Add (key, hash) pairs from an (n,) key array and an (n, packed bytes) array of LSB-first packed hashes.

        Into an empty index this builds the tree at once; otherwise the records join the delta and the next query
        (or change) rebuilds, once, so a collection streamed in batches is built once. A later pair wins over an
        earlier one with the same key, as with ``add``.
        """
        key_array = np.asarray(keys, np.int64).reshape(-1)
        words = self._packed_words(np.asarray(packed))
        if len(key_array) != len(words):
            raise ValueError("keys and packed hashes differ in length")
        if not len(key_array):
            return
        last = _first_of_each(key_array[::-1])
        if len(last) != len(key_array):
            pick = len(key_array) - 1 - last
            key_array, words = key_array[pick], words[pick]
        with self._lock:
            snap = self._snap
            if snap.live == 0 and snap.tree.size == 0 and snap.delta_count == 0:
                self._builds += 1
                self._snap = self._fresh(_build(self.nbits, words, key_array, self._builds))
                return
            tree = snap.tree
            found = np.minimum(np.searchsorted(tree.sorted_keys, key_array), max(tree.size - 1, 0))
            dead = 0
            if tree.size:
                hit = tree.sorted_keys[found] == key_array
                pos = tree.sorted_pos[found[hit]]
                pos = pos[tree.alive[pos]]
                tree.alive[pos] = False
                dead = len(pos)
            count = snap.delta_count
            delta_hit = np.isin(snap.delta_keys[:count], key_array) & snap.delta_alive[:count]
            snap.delta_alive[:count][delta_hit] = False
            killed = dead + int(delta_hit.sum())
            snap = replace(snap, dead=snap.dead + dead, live=snap.live - killed)
            self._snap = self._append(snap, key_array, words)

    def _locate(self, snap: _Snapshot, key: int) -> tuple[int, int]:
        """(tree position, delta position) of the live record of ``key``; -1 where it is not."""
        tree = snap.tree
        tree_pos = -1
        i = int(np.searchsorted(tree.sorted_keys, key))
        if i < tree.size and int(tree.sorted_keys[i]) == key:
            pos = int(tree.sorted_pos[i])
            if tree.alive[pos]:
                tree_pos = pos
        delta_pos = -1
        if tree_pos < 0 and snap.delta_count:
            count = snap.delta_count
            where = np.flatnonzero((snap.delta_keys[:count] == key) & snap.delta_alive[:count])
            if len(where):
                delta_pos = int(where[0])
        return tree_pos, delta_pos

    def _kill(self, snap: _Snapshot, tree_pos: int, delta_pos: int) -> _Snapshot:
        if tree_pos >= 0:
            snap.tree.alive[tree_pos] = False
            return replace(snap, dead=snap.dead + 1, live=snap.live - 1)
        if delta_pos >= 0:
            snap.delta_alive[delta_pos] = False
            return replace(snap, live=snap.live - 1)
        return snap

    def _append(self, snap: _Snapshot, keys: Ints, words: Words) -> _Snapshot:
        """Write rows past the delta's filled prefix (readers do not look there), growing it by copy if full."""
        count, extra = snap.delta_count, len(keys)
        if count + extra > len(snap.delta_keys):
            capacity = max(2 * len(snap.delta_keys), count + extra)
            grown_words = np.zeros((capacity, self.nwords), np.uint64)
            grown_keys = np.zeros(capacity, np.int64)
            grown_alive = np.zeros(capacity, np.bool_)
            grown_words[:count] = snap.delta_words[:count]
            grown_keys[:count] = snap.delta_keys[:count]
            grown_alive[:count] = snap.delta_alive[:count]
            snap = replace(snap, delta_words=grown_words, delta_keys=grown_keys, delta_alive=grown_alive)
        snap.delta_words[count : count + extra] = words
        snap.delta_keys[count : count + extra] = keys
        snap.delta_alive[count : count + extra] = True
        return replace(snap, delta_count=count + extra, live=snap.live + extra)

    def _due(self, snap: _Snapshot) -> bool:
        size = snap.tree.size
        return snap.delta_count > max(DELTA_MIN, DELTA_SHARE * size) or snap.dead > max(DELTA_MIN, DEAD_SHARE * size)

    def _rebuild_if_due(self, snap: _Snapshot) -> None:
        if self._due(snap):
            self.rebuild()

    def rebuild(self) -> None:
        """Rebuild the tree from the live records; readers keep the old snapshot until the new one is swapped in."""
        with self._lock:
            snap = self._snap
            tree, count = snap.tree, snap.delta_count
            alive = snap.delta_alive[:count]
            words = np.concatenate([tree.words[tree.alive], snap.delta_words[:count][alive]])
            keys = np.concatenate([tree.keys[tree.alive], snap.delta_keys[:count][alive]])
            self._builds += 1
            self._snap = self._fresh(_build(self.nbits, words, keys, self._builds))

    def _reader_snapshot(self) -> _Snapshot:
        """The current snapshot, after a rebuild if one is due and no writer is busy (readers never wait)."""
        snap = self._snap
        if self._due(snap) and self._lock.acquire(blocking=False):
            try:
                if self._due(self._snap):
                    self.rebuild()
                snap = self._snap
            finally:
                self._lock.release()
        return snap

    # ----- queries -----------------------------------------------------------------------------------------------

    def _query_words(self, query: int | bytes | npt.NDArray[np.uint8]) -> Words:
        if not isinstance(query, int):
            data = bytes(query)
            if len(data) != self.packed_bytes:
                raise ValueError(f"a packed hash has {self.packed_bytes} bytes, got {len(data)}")
            query = int.from_bytes(data, "little")
        return self._words(query)

    def search(self, query: int, max_bits: int, accept: Callable[[int], bool] | None = None) -> list[Hit]:
        bits, keys = self.search_arrays(query, max_bits)
        return [Hit(b, k) for b, k in zip(bits.tolist(), keys.tolist(), strict=True) if accept is None or accept(k)]

    def search_arrays(self, query: int | bytes | npt.NDArray[np.uint8], max_bits: int) -> tuple[Ints, Ints]:
        """``search`` as (bits, keys) arrays sorted by (bits, key); ``query`` may also be the packed bytes."""
        if max_bits < 0:
            return _NO_HITS
        radius = min(max_bits, self.nbits)
        snap = self._reader_snapshot()
        distance = _Distance(self._query_words(query))
        bits, keys = _tree_range(snap.tree, distance, radius)
        count = snap.delta_count
        if count:
            delta_bits = distance(snap.delta_words[:count])
            near = np.flatnonzero((delta_bits <= radius) & snap.delta_alive[:count])
            bits = np.concatenate([bits, delta_bits[near].astype(np.int64)])
            keys = np.concatenate([keys, snap.delta_keys[near]])
        return _sorted_hits(bits, keys, self.nbits)

    def nearest(
        self, query: int, k: int, max_bits: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[Hit]:
        bits, keys = self.nearest_arrays(query, k, max_bits, accept)
        return [Hit(b, k) for b, k in zip(bits.tolist(), keys.tolist(), strict=True)]

    def nearest_arrays(
        self,
        query: int | bytes | npt.NDArray[np.uint8],
        k: int,
        max_bits: int | None = None,
        accept: Callable[[int], bool] | None = None,
    ) -> tuple[Ints, Ints]:
        """``nearest`` as (bits, keys) arrays; ``query`` may also be the packed bytes."""
        limit = self.nbits if max_bits is None else min(max_bits, self.nbits)
        if k <= 0 or limit < 0:
            return _NO_HITS
        snap = self._reader_snapshot()
        distance = _Distance(self._query_words(query))
        best = _Best(k, limit, accept)
        tree = snap.tree
        count = snap.delta_count
        if count:
            live = np.flatnonzero(snap.delta_alive[:count])
            best.offer(tree.size + live, distance(snap.delta_words[live]), snap.delta_keys[live])
        _tree_nearest(tree, distance, best)
        return best.bits, best.keys


def _sorted_hits(bits: Ints, keys: Ints, nbits: int) -> tuple[Ints, Ints]:
    """Hits sorted by (bits, key), each key once (block tables can find a record in several tables).

    When keys and bits fit in one int64 together, one ``np.sort`` of ``bits << s | key`` does it (several times
    faster than ``lexsort`` or ``np.unique``, measured).
    """
    if not len(keys):
        return bits, keys
    shift = int(keys.max()).bit_length()
    if int(keys.min()) >= 0 and shift + nbits.bit_length() <= 62:
        packed = np.sort((bits << shift) | keys)
        fresh = np.empty(len(packed), np.bool_)
        fresh[0] = True
        np.not_equal(packed[1:], packed[:-1], out=fresh[1:])
        packed = packed[fresh]
        return packed >> shift, packed & ((1 << shift) - 1)
    order = np.lexsort((keys, bits))
    bits, keys = bits[order], keys[order]
    fresh = np.empty(len(keys), np.bool_)
    fresh[0] = True
    np.not_equal(keys[1:], keys[:-1], out=fresh[1:])
    return bits[fresh], keys[fresh]


def _tree_range(tree: _Tree, distance: _Distance, radius: int) -> tuple[Ints, Ints]:
    """(bits, keys) of the live tree records within ``radius`` of the query, in no particular order; with block
    tables a record can come more than once (the caller sorts and drops repeats)."""
    if tree.size == 0:
        return _NO_HITS
    if tree.size < (SMALL_BLOCKS if tree.blocks else SMALL_PIVOTS)[0]:
        found = None
    elif tree.blocks is not None:
        hits = _block_hits(tree, distance, 0, radius, radius)
        if hits is not None:
            pos, bits = hits
            alive = tree.alive[pos]
            return bits[alive], tree.keys[pos[alive]]
        found = None
    else:
        found = _pivot_runs(tree, distance, radius)
    if found is None:  # pruning keeps too much: a plain scan is faster
        counts = distance(tree.words)
        pos = np.flatnonzero(counts <= radius)
        pos = pos[tree.alive[pos]]
        return counts[pos].astype(np.int64), tree.keys[pos]
    counts = distance(np.take(tree.words, found, axis=0))
    near = np.flatnonzero(counts <= radius)
    pos = found[near]
    alive = tree.alive[pos]
    return counts[near][alive].astype(np.int64), tree.keys[pos[alive]]


def _pivot_runs(tree: _Tree, distance: _Distance, radius: int) -> Ints | None:
    """Tree positions the pivot tree cannot rule out for ``radius``; None when that is most of them."""
    assert tree.pivot is not None
    pivot = tree.pivot
    span = tree.nbits + 1
    frontier = np.zeros(1, np.int64)
    levels = len(pivot.pivots)
    for level in range(levels - 1):
        near = distance(np.take(pivot.pivots[level], frontier, axis=0)).astype(np.int64)
        base = frontier * span
        frontier = _runs(
            np.searchsorted(pivot.hi_keys[level], base + np.maximum(near - radius, 0), side="left"),
            np.searchsorted(pivot.lo_keys[level], base + np.minimum(near + radius, tree.nbits), side="right"),
        )
        if not len(frontier):
            return frontier
    near = distance(np.take(pivot.pivots[-1], frontier, axis=0)).astype(np.int64)
    return _leaf_candidates(tree, frontier, near, radius)


def _leaf_candidates(tree: _Tree, leaves: Ints, near: Ints, radius: int) -> Ints | None:
    """Records of ``leaves`` whose distance to their leaf's pivot is within ``radius`` of the query's (``near``).

    This reads 2 bytes per record instead of a whole hash, and leaves few hashes to compare; None when the
    records left are more than a plain scan would cost.
    """
    assert tree.pivot is not None
    starts = tree.pivot.leaf_starts
    first, last = starts[leaves], starts[leaves + 1]
    if int((last - first).sum()) > LEAF_SCAN_SHARE * tree.size:
        return None
    candidates = _runs(first, last)
    gap = tree.pivot.leaf_distance[candidates] - np.repeat(near, last - first)
    found = candidates[np.abs(gap) <= radius]
    return None if len(found) > LINEAR_SHARE * tree.size else found


def _block_hits(tree: _Tree, distance: _Distance, low: int, high: int, radius: int) -> tuple[Ints, Ints] | None:
    """(tree positions, bits) of the records within ``radius`` among those the block tables find for the steps
    ``low..high``; a record can come more than once (though not often: repeats are dropped from large answers).
    None when the buckets hold more than a scan would cost.

    Step ``t`` looks, in table ``t % m``, at the buckets whose value differs from the query's block in exactly
    ``t // m`` bits. After steps ``0..R`` every record within ``R`` bits has been found: were it missed, each
    block ``b`` would differ in more than ``(R - b) // m`` bits, and those numbers add up to ``R + 1`` (the
    pigeonhole principle, spread over the tables as in multi-index hashing).
    """
    assert tree.blocks is not None
    blocks = tree.blocks
    masks, tables, bases = blocks.plan(low, high)
    if not len(masks):
        return _NO_HITS
    query_blocks = ((distance.scalar >> blocks.shift_array) & blocks.mask_array).astype(np.int64)
    values = (masks ^ query_blocks[tables]) + bases
    first = blocks.offsets[values]
    last = blocks.offsets[values + 1]
    if int((last - first).sum()) > BLOCK_LINEAR_SHARE * tree.size:
        return None
    rows = _runs(first, last)
    differ = blocks.words[rows] ^ distance.scalar
    bits = np.bitwise_count(differ)
    near = np.flatnonzero(bits <= radius)
    rows = rows[near]
    if len(rows) > 256:  # many hits (a large group of copies): drop the repeats before they are looked up
        keep = _first_finds(blocks, tree.size, rows, differ[near], low, high)
        rows, near = rows[keep], near[keep]
    return blocks.order[rows].astype(np.int64), bits[near].astype(np.int64)


def _first_finds(blocks: _BlockTables, size: int, rows: Ints, differ: Words, low: int, high: int) -> Bools:
    """Which of these bucket rows (found for steps ``low..high``) no earlier table also found in those steps."""
    count = len(blocks.widths)
    table = rows // size
    keep = np.ones(len(rows), np.bool_)
    for earlier, (width, shift) in enumerate(zip(blocks.widths[:-1], blocks.shifts[:-1], strict=True)):
        weight_low = max(0, -(-(low - earlier) // count))
        weight_high = min(width, (high - earlier) // count) if high >= earlier else -1
        if weight_high < weight_low:
            continue
        block = np.bitwise_count((differ >> np.uint64(shift)) & np.uint64((1 << width) - 1))
        keep &= ~((table > earlier) & (block >= weight_low) & (block <= weight_high))
    return keep


def _tree_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """Offer ``best`` every live tree record that can be among the k nearest."""
    if tree.size == 0:
        return
    if tree.size < (SMALL_BLOCKS if tree.blocks else SMALL_PIVOTS)[1]:
        _linear_nearest(tree, distance, best)
    elif tree.blocks is not None:
        _block_nearest(tree, distance, best)
    else:
        _pivot_nearest(tree, distance, best)


def _offer_positions(tree: _Tree, distance: _Distance, best: _Best, found: Ints) -> None:
    bits = distance(np.take(tree.words, found, axis=0))
    near = np.flatnonzero(bits <= best.radius)
    pos = found[near]
    alive = tree.alive[pos]
    best.offer(pos[alive], bits[near][alive], tree.keys[pos[alive]])


def _block_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """Steps of the block search in rounds (one more differing bit per table each round) until the k-th best
    distance is certified: every record within it has been found."""
    assert tree.blocks is not None
    count = len(tree.blocks.widths)
    done = -1
    while done < best.limit and best.radius > done:
        high = min(best.limit, best.radius, done + count)
        hits = _block_hits(tree, distance, done + 1, high, best.radius)
        if hits is None:
            _linear_nearest(tree, distance, best)
            return
        pos, bits = hits
        alive = tree.alive[pos]
        best.offer(pos[alive], bits[alive], tree.keys[pos[alive]])
        done = high


def _pivot_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """The pivot walk with a radius that shrinks as it goes.

    Pivots are records, so each level's pivot distances are offered first (tightening the radius before the
    children are chosen); each child keeps a lower bound (the largest gap between its distance range and the
    query's distance to an ancestor's pivot). Leaves are scanned in order of their lower bound, in growing batches,
    the radius being re-read before each batch.
    """
    assert tree.pivot is not None
    pivot = tree.pivot
    span = tree.nbits + 1
    levels = len(pivot.pivots)
    frontier = np.zeros(1, np.int64)
    bound = np.zeros(1, np.int64)
    near = bound
    for level in range(levels):
        near = distance(np.take(pivot.pivots[level], frontier, axis=0)).astype(np.int64)
        pivot_pos = pivot.pivot_pos[level][frontier]
        live = tree.alive[pivot_pos]
        best.offer(pivot_pos[live], near[live], tree.keys[pivot_pos[live]])
        if level == levels - 1:
            break
        radius = best.radius
        base = frontier * span
        first = np.searchsorted(pivot.hi_keys[level], base + np.maximum(near - radius, 0), side="left")
        last = np.searchsorted(pivot.lo_keys[level], base + np.minimum(near + radius, tree.nbits), side="right")
        children = _runs(first, last)
        parent = np.repeat(np.arange(len(frontier)), last - first)
        parent_near = near[parent]
        low = pivot.lo_keys[level][children] - base[parent]
        high = pivot.hi_keys[level][children] - base[parent]
        gap = np.maximum(np.maximum(low - parent_near, parent_near - high), bound[parent])
        keep = gap <= best.radius
        frontier, bound = children[keep], gap[keep]
        if not len(frontier):
            return
    # First the leaves with the smallest lower bounds (usually where the answers are): that tightens the radius.
    order = np.argsort(bound, kind="stable")
    frontier, bound, near = frontier[order], bound[order], near[order]
    starts = pivot.leaf_starts
    sizes = starts[frontier + 1] - starts[frontier]
    head = int(np.searchsorted(np.cumsum(sizes), max(FIRST_LEAVES, 16 * best.k), side="left")) + 1
    found = _leaf_candidates(tree, frontier[:head], near[:head], best.radius)
    if found is None:
        _linear_nearest(tree, distance, best)
        return
    _offer_positions(tree, distance, best, found)
    # Then every other leaf still in reach, filtered per record (2 bytes each) before any hash is read: if most
    # records pass, a plain scan is cheaper, and this cost only a small share of one.
    radius = best.radius
    rest = np.arange(head, len(frontier))
    rest = rest[bound[rest] <= radius]
    if int(sizes[rest].sum()) > LEAF_SCAN_SHARE * tree.size or _most_pass(tree, frontier[rest], near[rest], radius):
        _linear_nearest(tree, distance, best)
        return
    candidates = _runs(starts[frontier[rest]], starts[frontier[rest] + 1])
    gap = np.abs(pivot.leaf_distance[candidates] - np.repeat(near[rest], sizes[rest]))
    low = np.maximum(gap, np.repeat(bound[rest], sizes[rest]))  # a lower bound of each record's distance
    keep = np.flatnonzero(low <= radius)
    if len(keep) > LINEAR_SHARE * tree.size:
        _linear_nearest(tree, distance, best)
        return
    candidates, low = candidates[keep], low[keep]
    # in chunks growing 2x, in the leaves' order, each cut again with the radius as it stands
    done, chunk = 0, 4096
    while done < len(candidates):
        part = candidates[done : done + chunk]
        part = part[low[done : done + chunk] <= best.radius]
        if len(part):
            _offer_positions(tree, distance, best, part)
        done += chunk
        chunk *= 2


def _most_pass(tree: _Tree, leaves: Ints, near: Ints, radius: int) -> bool:
    """Whether more than ``LINEAR_SHARE`` of all records would pass the leaves' filter, judged on every 16th leaf
    (so a query that ends up scanning everything does not first filter everything)."""
    if len(leaves) < 256:
        return False
    found = _leaf_candidates(tree, leaves[::16], near[::16], radius)
    return found is None or 16 * len(found) > 1.2 * LINEAR_SHARE * tree.size


def _linear_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """k nearest by scanning every record: when the filter would keep most of them anyway.

    The k-th distance comes from a histogram of the distances (``bincount``, linear) rather than a partition.
    With ``accept``, records are offered in growing shells of distance, so it is asked about few beyond the k-th.
    """
    bits = distance(tree.words)
    clean = bool(tree.alive.all())  # no tombstones: skip the masks (one fast pass decides)
    counts = np.bincount(bits if clean else bits[tree.alive], minlength=tree.nbits + 1)
    histogram = np.cumsum(counts[: best.radius + 1])
    total = int(histogram[-1])
    wanted = best.k if best.accept is None else 4 * best.k
    while True:
        shell = int(np.searchsorted(histogram, min(wanted, total), side="left"))
        pos = np.flatnonzero(bits <= shell)
        if not clean:
            pos = pos[tree.alive[pos]]
        best.offer(pos, bits[pos], tree.keys[pos])
        # done once every record within the k-th distance was offered
        if best.radius <= shell or wanted >= total:
            return
        wanted *= 4
