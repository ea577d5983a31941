"""A Hamming index that keeps the BK-tree's idea (prune by distance to pivots) but does all of its work in numpy.

Why not a BK-tree of Python nodes: at useful radii a search visits a large share of the nodes, one interpreted
distance call each, and loses to a plain vectorised scan (issue 6). Here the same triangle-inequality pruning is
applied a whole tree level at a time, and the records are scanned as contiguous packed arrays.

Layout. Hashes are rows of ``nwords = ceil(nbits / 64)`` uint64 words (bit ``i`` in word ``i // 64``, bit
``i % 64``: the little-endian packed bytes, viewed as words). The static tree holds every record in one ``(n,
nwords)`` array, ordered so that each tree node owns one contiguous slice:

- every node has a pivot (one of its records). An inner node's records are sorted by their distance to its pivot
  and cut, only between distinct distances, into up to ``fanout`` children, each covering a range of distances
  ``[lo, hi]``. By the triangle inequality a record within ``r`` of the query ``q`` lies in a child whose range
  meets ``[d(q, pivot) - r, d(q, pivot) + r]``; those children are one run of consecutive children.
- a leaf's records are sorted by their distance to the leaf's pivot, kept as one sorted key per record
  (``leaf * (nbits + 1) + distance``), so the records a leaf can contribute are one slice found by binary search.

A search walks the tree level by level: for the whole frontier at once it gathers the pivots, computes their
distances with XOR + ``np.bitwise_count``, finds the surviving children with ``searchsorted``, then scans the
surviving leaf slices in one gather. When pruning would keep most records (large radii), it scans the whole array
instead, which is what the plain numpy scan does: so the tree is never much slower than it.

k nearest: the same walk with a radius that shrinks as it goes. Pivots are records, so every pivot distance is
a candidate answer: the k-th best accepted one bounds the radius at each level, the leaves are then scanned with
that bound (first those whose lower bound is smallest, which tightens it again), and the final answer keeps every
record within the k-th distance, sorted by (bits, key), so ties at the k-th place go to the smaller key.

Changes. New records go to a small unsorted delta array that every search scans; deleted or replaced records are
tombstones (a boolean mask). Past a share of either, the next change or query rebuilds the tree from the live
records. ``bulk_load`` into an empty index builds at once; otherwise it only appends, and the next query pays the
one rebuild (so streaming a collection in batches costs one build, not one per batch). Readers never lock: they take
the current snapshot, and a rebuild swaps in a new one atomically; a lock orders the writers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

FANOUT = 16  # children per inner node (at most; fewer when distances do not spread)
LEAF_SIZE = 48  # target records per leaf
CHUNK_ROWS = 4096  # rows per vectorised distance step: temporaries stay in the CPU cache
LINEAR_SHARE = 0.3  # scan everything when pruning keeps more than this share of the records
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
        self.query = query
        self.scalar = query[0]
        rows = min(CHUNK_ROWS, 1 << 20)
        self.tiled = np.tile(query, rows) if self.nwords > 1 else query

    def __call__(self, rows: Words) -> npt.NDArray[np.integer]:
        """Distances of each row of ``rows`` ((m, nwords) C-contiguous) as an unsigned int array of length m."""
        if self.nwords == 1:
            return np.bitwise_count(rows[:, 0] ^ self.scalar)
        m = len(rows)
        out = np.empty(m, np.uint64 if self.nwords % 8 == 0 else np.uint16)
        for start in range(0, m, CHUNK_ROWS):
            block = rows[start : start + CHUNK_ROWS]
            out[start : start + len(block)] = self._block(block)
        return out

    def _block(self, block: Words) -> npt.NDArray[np.integer]:
        count = len(block)
        flat = block.reshape(-1) ^ self.tiled[: count * self.nwords]
        bytes_ = np.bitwise_count(flat).astype(np.uint8, copy=False)
        if self.nwords % 8:
            return bytes_.reshape(count, self.nwords).sum(axis=1, dtype=np.uint16)
        lanes = bytes_.view(np.uint64)
        pairs = (lanes & _LANES) + ((lanes >> np.uint64(8)) & _LANES)  # four 16-bit lanes per word
        per_row = pairs.reshape(count, self.nwords // 8).sum(axis=1, dtype=np.uint64)
        return (per_row * _SUM_LANES) >> np.uint64(48)  # add the four lanes


def _runs(starts: Ints, ends: Ints) -> Ints:
    """Concatenate ``arange(starts[i], ends[i])`` for every i, without a Python loop."""
    counts = ends - starts
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64)
    keep = counts > 0
    starts, counts = starts[keep], counts[keep]
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return np.arange(total, dtype=np.int64) + shift


@dataclass(frozen=True)
class _Tree:
    """The static part: records in tree order and the pivot tree over them (see the module docstring)."""

    nbits: int
    words: Words  # (n, nwords), tree order
    keys: Ints  # (n,), tree order
    alive: Bools  # (n,), tombstones are False; changed in place
    sorted_keys: Ints  # keys, sorted, to find a key's position
    sorted_pos: npt.NDArray[np.int32]  # position in tree order of each of sorted_keys
    pivots: list[Words]  # per level: (nodes, nwords) pivot words
    pivot_pos: list[Ints]  # per level: tree position of each pivot record
    lo_keys: list[Ints]  # per inner level: parent * (nbits + 1) + lowest distance of each child (sorted)
    hi_keys: list[Ints]  # per inner level: parent * (nbits + 1) + highest distance of each child (sorted)
    leaf_keys: npt.NDArray[np.int64] | npt.NDArray[np.int32]  # (n,) leaf * (nbits + 1) + distance, sorted

    @property
    def size(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        arrays = [self.words, self.keys, self.alive, self.sorted_keys, self.sorted_pos, self.leaf_keys]
        arrays += self.pivots + self.pivot_pos + self.lo_keys + self.hi_keys
        return sum(a.nbytes for a in arrays)


def _empty_tree(nbits: int, nwords: int) -> _Tree:
    return _build(nbits, np.empty((0, nwords), np.uint64), np.empty(0, np.int64))


def _pivot_distances(words: Words, owner: Ints, pivots: Words) -> Ints:
    """Distance of each row of ``words`` to the pivot of its node (``owner[i]``), in chunks."""
    out = np.empty(len(words), np.int64)
    nwords = words.shape[1]
    for start in range(0, len(words), 1 << 16):
        block = words[start : start + (1 << 16)]
        diff = block ^ np.take(pivots, owner[start : start + len(block)], axis=0)
        counts = np.bitwise_count(diff)
        out[start : start + len(block)] = counts[:, 0] if nwords == 1 else counts.sum(axis=1, dtype=np.int64)
    return out


def _build(nbits: int, words: Words, keys: Ints, seed: int = 0) -> _Tree:
    """Build the tree over (words, keys) (unique keys), one vectorised pass per level."""
    n = len(keys)
    span = nbits + 1
    rng = np.random.default_rng(seed)
    levels = 1 + math.ceil(math.log(n / LEAF_SIZE, FANOUT)) if n > LEAF_SIZE else 1
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
        targets = (starts[:, None] + (sizes[:, None] * np.arange(1, FANOUT)[None, :]) // FANOUT).ravel()
        targets = np.searchsorted(sort_key, sort_key[targets], side="left")
        bounds = np.unique(np.concatenate([starts, ends, targets]))
        starts, ends = bounds[:-1], bounds[1:]
        lo_keys.append(sort_key[starts])
        hi_keys.append(sort_key[ends - 1])
    sorted_pos = np.argsort(keys, kind="stable")
    sorted_keys = keys[sorted_pos]
    leaf_keys = sort_key.astype(np.int32) if n == 0 or sort_key[-1] < 2**31 - span else sort_key
    return _Tree(
        nbits=nbits,
        words=np.ascontiguousarray(words),
        keys=keys,
        alive=np.ones(n, np.bool_),
        sorted_keys=sorted_keys,
        sorted_pos=sorted_pos.astype(np.int32),
        pivots=pivots,
        pivot_pos=[sorted_pos[np.searchsorted(sorted_keys, k)] for k in pivot_keys],
        lo_keys=lo_keys,
        hi_keys=hi_keys,
        leaf_keys=leaf_keys,
    )


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

    def offer(self, ids: Ints, bits: npt.NDArray[np.integer], keys: Ints) -> None:
        keep = bits <= self.radius
        if len(self.ids):
            keep &= ~np.isin(ids, self.ids)
        if not keep.any():
            return
        ids, bits, keys = ids[keep], bits[keep].astype(np.int64), keys[keep]
        order = np.lexsort((keys, bits))
        if self.accept is not None:
            order = self._accepted(order, bits, keys)
        else:
            order = order[: self.k]
        merged_ids = np.concatenate([self.ids, ids[order]])
        merged_bits = np.concatenate([self.bits, bits[order]])
        merged_keys = np.concatenate([self.keys, keys[order]])
        best = np.lexsort((merged_keys, merged_bits))[: self.k]
        self.ids, self.bits, self.keys = merged_ids[best], merged_bits[best], merged_keys[best]

    def _accepted(self, order: Ints, bits: Ints, keys: Ints) -> Ints:
        """The first k accepted of ``order``, asking ``accept`` only until nothing better than the k-th is left."""
        assert self.accept is not None
        taken: list[int] = []
        worst = (
            (self.radius, np.iinfo(np.int64).max)
            if len(self.bits) < self.k
            else (
                int(self.bits[-1]),
                int(self.keys[-1]),
            )
        )
        for i in order.tolist():
            if (int(bits[i]), int(keys[i])) > worst:
                break
            if self.accept(int(keys[i])):
                taken.append(i)
                if len(taken) == self.k:
                    break
        return np.array(taken, np.int64)


class NumpyTreeIndex:
    """Exact Hamming search over (key, hash) pairs: a vectorised pivot tree plus a delta and tombstones."""

    def __init__(self, nbits: int) -> None:
        if nbits <= 0:
            raise ValueError("nbits must be positive")
        self.nbits = nbits
        self.nwords = (nbits + 63) // 64
        self.packed_bytes = (nbits + 7) // 8
        self._lock = threading.RLock()
        self._builds = 0
        self._snap = self._fresh(_build(nbits, np.empty((0, self.nwords), np.uint64), np.empty(0, np.int64)))

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
        unique, last = np.unique(key_array[::-1], return_index=True)
        if len(unique) != len(key_array):
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

    def search(self, query: int, max_bits: int, accept: Callable[[int], bool] | None = None) -> list[Hit]:
        if max_bits < 0:
            return []
        radius = min(max_bits, self.nbits)
        snap = self._reader_snapshot()
        distance = _Distance(self._words(query))
        bits, keys = _tree_range(snap.tree, distance, radius)
        count = snap.delta_count
        if count:
            delta_bits = distance(snap.delta_words[:count])
            near = np.flatnonzero((delta_bits <= radius) & snap.delta_alive[:count])
            bits = np.concatenate([bits, delta_bits[near].astype(np.int64)])
            keys = np.concatenate([keys, snap.delta_keys[near]])
        order = np.lexsort((keys, bits))
        return [
            Hit(b, k)
            for b, k in zip(bits[order].tolist(), keys[order].tolist(), strict=True)
            if accept is None or accept(k)
        ]

    def nearest(
        self, query: int, k: int, max_bits: int | None = None, accept: Callable[[int], bool] | None = None
    ) -> list[Hit]:
        limit = self.nbits if max_bits is None else min(max_bits, self.nbits)
        if k <= 0 or limit < 0:
            return []
        snap = self._reader_snapshot()
        distance = _Distance(self._words(query))
        best = _Best(k, limit, accept)
        tree = snap.tree
        count = snap.delta_count
        if count:
            live = np.flatnonzero(snap.delta_alive[:count])
            best.offer(tree.size + live, distance(snap.delta_words[live]), snap.delta_keys[live])
        _tree_nearest(tree, distance, best)
        return [Hit(b, k) for b, k in zip(best.bits.tolist(), best.keys.tolist(), strict=True)]


def _tree_range(tree: _Tree, distance: _Distance, radius: int) -> tuple[Ints, Ints]:
    """(bits, keys) of the live tree records within ``radius`` of the query, in no particular order."""
    if tree.size == 0:
        return _NO_HITS
    span = tree.nbits + 1
    frontier = np.zeros(1, np.int64)
    levels = len(tree.pivots)
    first = last = frontier
    for level in range(levels):
        near = distance(np.take(tree.pivots[level], frontier, axis=0)).astype(np.int64)
        base = frontier * span
        low = base + np.maximum(near - radius, 0)
        high = base + np.minimum(near + radius, tree.nbits)
        if level < levels - 1:
            frontier = _runs(
                np.searchsorted(tree.hi_keys[level], low, side="left"),
                np.searchsorted(tree.lo_keys[level], high, side="right"),
            )
            if not len(frontier):
                return _NO_HITS
        else:
            leaf_keys = tree.leaf_keys
            first = np.searchsorted(leaf_keys, low.astype(leaf_keys.dtype), side="left")
            last = np.searchsorted(leaf_keys, high.astype(leaf_keys.dtype), side="right")
    if int((last - first).sum()) > LINEAR_SHARE * tree.size:
        bits = distance(tree.words)
        pos = np.flatnonzero((bits <= radius) & tree.alive)
    else:
        candidates = _runs(first, last)
        bits = distance(np.take(tree.words, candidates, axis=0))
        near_rows = np.flatnonzero(bits <= radius)
        pos = candidates[near_rows]
        bits = bits[near_rows]
        alive = tree.alive[pos]
        pos, bits = pos[alive], bits[alive]
        return bits.astype(np.int64), tree.keys[pos]
    return bits[pos].astype(np.int64), tree.keys[pos]


def _tree_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """Offer ``best`` every tree record that can be among the k nearest, with a radius shrinking as it goes.

    Pivots are records, so each level's pivot distances are offered first (tightening the radius before the
    children are chosen); each child keeps a lower bound (the largest gap between its distance range and the
    query's distance to an ancestor's pivot). Leaves are scanned in order of their lower bound, in growing batches,
    the radius being re-read before each batch.
    """
    if tree.size == 0:
        return
    span = tree.nbits + 1
    levels = len(tree.pivots)
    frontier = np.zeros(1, np.int64)
    bound = np.zeros(1, np.int64)
    near = bound
    for level in range(levels):
        near = distance(np.take(tree.pivots[level], frontier, axis=0)).astype(np.int64)
        pivot_pos = tree.pivot_pos[level][frontier]
        live = tree.alive[pivot_pos]
        best.offer(pivot_pos[live], near[live], tree.keys[pivot_pos[live]])
        if level == levels - 1:
            break
        radius = best.radius
        base = frontier * span
        first = np.searchsorted(tree.hi_keys[level], base + np.maximum(near - radius, 0), side="left")
        last = np.searchsorted(tree.lo_keys[level], base + np.minimum(near + radius, tree.nbits), side="right")
        children = _runs(first, last)
        parent = np.repeat(np.arange(len(frontier)), last - first)
        parent_near = near[parent]
        low = tree.lo_keys[level][children] - base[parent]
        high = tree.hi_keys[level][children] - base[parent]
        gap = np.maximum(np.maximum(low - parent_near, parent_near - high), bound[parent])
        keep = gap <= best.radius
        frontier, bound = children[keep], gap[keep]
        if not len(frontier):
            return
    order = np.argsort(bound, kind="stable")
    frontier, bound, near = frontier[order], bound[order], near[order]
    leaf_keys = tree.leaf_keys
    budget = max(1024, 16 * best.k)
    base = frontier * span
    first_pass = True
    while len(frontier):
        radius = best.radius
        keep = bound <= radius
        frontier, bound, near, base = frontier[keep], bound[keep], near[keep], base[keep]
        low = (base + np.maximum(near - radius, 0)).astype(leaf_keys.dtype)
        high = (base + np.minimum(near + radius, tree.nbits)).astype(leaf_keys.dtype)
        first = np.searchsorted(leaf_keys, low, side="left")
        last = np.searchsorted(leaf_keys, high, side="right")
        sizes = last - first
        if first_pass and int(sizes.sum()) > LINEAR_SHARE * tree.size:
            _linear_nearest(tree, distance, best)
            return
        first_pass = False
        take = int(np.searchsorted(np.cumsum(sizes), budget, side="left")) + 1
        candidates = _runs(first[:take], last[:take])
        if len(candidates):
            bits = distance(np.take(tree.words, candidates, axis=0))
            near_rows = np.flatnonzero(bits <= best.radius)
            pos = candidates[near_rows]
            live = tree.alive[pos]
            best.offer(pos[live], bits[near_rows][live], tree.keys[pos[live]])
        frontier, bound, near, base = frontier[take:], bound[take:], near[take:], base[take:]
        budget *= 4


def _linear_nearest(tree: _Tree, distance: _Distance, best: _Best) -> None:
    """k nearest by scanning every record: when the tree would keep most of them anyway."""
    bits = distance(tree.words)
    radius = best.radius
    pos = np.flatnonzero((bits <= radius) & tree.alive)
    if best.accept is None and len(pos) > best.k:
        kth = np.partition(bits[pos], best.k - 1)[best.k - 1]
        pos = pos[bits[pos] <= kth]
    elif best.accept is not None and len(pos) > 4 * best.k:
        # offer in growing shells so ``accept`` is asked about few records beyond the k-th
        values = bits[pos]
        taken = 4 * best.k
        while True:
            shell = np.partition(values, taken - 1)[taken - 1] if taken < len(values) else best.limit
            inner = pos[values <= shell]
            best.offer(inner, bits[inner], tree.keys[inner])
            if len(best.bits) >= best.k or taken >= len(values):
                return
            taken *= 4
    best.offer(pos, bits[pos], tree.keys[pos])
