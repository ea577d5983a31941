"""An exact Hamming index that does its work in numpy: block tables (multi-index hashing) for near radii, and a
pivot tree for long hashes beyond them.

Why: a BK-tree of Python nodes (pybktree) visits a large share of its nodes at useful radii, one interpreted
distance call each, and loses to a plain vectorised scan (issue 6). Here pruning is decided for a whole frontier
at once, and hashes are read as contiguous packed arrays: rows of ``nwords = ceil(nbits / 64)`` uint64 words, bit
``i`` of the hash in word ``i // 64`` at bit ``i % 64`` (the LSB-first packed bytes viewed as little-endian words).
Distances are XOR + ``np.bitwise_count`` (see ``kernels.Distance`` for why it is not the one-liner).

Two filters, because they prune different data (measured with ``benchmarks/bench_index.py``, on realistic and on
uniformly random hashes):

- Block tables, for every hash length (:mod:`matchdb.index.blocks`): a few bytes of the hash per table, the records
  bucketed by them; a record within ``r`` bits has, in some table, a substring within ``r // m`` bits of the
  query's (pigeonhole), so a search reads only the few buckets that near. This is what finds a near duplicate
  among hashes that look random, where every other record is about half the bits away and no metric tree prunes.
  One-word hashes (phash, 64 bits) use them at every radius (unrelated phash hashes are 25 to 37 bits apart, so a
  pivot rules out little); long ones (bmh1, 961 bits) up to ``NEAR_SHARE`` of the bits.
- Long hashes, beyond that or when the buckets are crowded (real photos' hashes are far from uniform: many share
  their sky or their background): the BK-tree's metric-tree idea. Unrelated bmh1 hashes of real photos lie
  anywhere from about 240 to 640 bits apart, so a record's distance to a pivot says a lot. Every node has a pivot
  (one of its records); an inner node's records are sorted by their distance to it and cut, only between distinct
  distances, into up to ``FANOUT`` children, each holding a range ``[lo, hi]`` of distances. By the triangle
  inequality a record within ``r`` of the query ``q`` can only be in a child whose range meets
  ``[d(q, pivot) - r, d(q, pivot) + r]``: one run of consecutive children, found with ``searchsorted`` for the
  whole frontier at once. Each node owns one contiguous slice of the records. In a leaf (about ``LEAF_SIZE``
  records) each record keeps its distance to the leaf's pivot (2 bytes), the last triangle-inequality test,
  applied before any hash is read.

The block tables know their cost before they read a bucket (the buckets' sizes), and give up past a budget; when
the pivot tree would keep most records (large radii), or the collection is small (then the filters' fixed cost of
a few dozen numpy calls is more than a scan), the search scans the whole array instead, which is what a plain
numpy scan does, so it is never much slower than one.

k nearest: a search whose radius shrinks as it goes, the k-th best accepted distance found so far. The block
tables run first, in rounds (one table exactly, then one more differing bit per table each round), until the k-th
best distance is certified (every record within it has been read): a near duplicate is found and proven nearest
without reading more. Past the tables' reach or budget the pivot tree goes on from what they found. In the pivot
tree, pivots are records, so each level's pivot distances are candidates too; the leaves nearest the query are
scanned first, then the rest, filtered with the radius as it stands. The answer keeps every record within the
k-th distance sorted by (bits, key), so ties at the k-th place go to the smaller key (the record inserted first);
``accept`` is applied before k.

Changes: new records go to a small unsorted delta array that every search scans; deleted or replaced records
become tombstones. Past a share of either, the next change or query rebuilds from the live records. ``bulk_load``
into an empty index builds at once; into a non-empty one it only appends, and the next query pays one rebuild (so a
collection streamed in batches is built once, not once per batch).

Readers never lock: they take the current snapshot, and nothing they can reach through it changes afterwards. A
lock orders the writers, who publish a new snapshot for every change: rows are appended past the delta's filled
prefix (which a snapshot's ``delta_count`` hides), a delta that is full is grown into new arrays, tombstones are
generation stamps (:mod:`matchdb.index.liveness`: a row killed now is still alive to every snapshot published
before), and a rebuild builds new arrays and swaps them in as one reference.

Where the parts live: ``tuning`` (sizes and thresholds), ``kernels`` (words and distances), ``blocks`` (the block
tables: layout and probing), ``layout`` (the tree and how it is built), ``search`` (radius and k-nearest over a
built tree); this module keeps the snapshot, the delta and tombstones, and the public class.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning
from matchdb.index.base import Hit
from matchdb.index.kernels import Distance, Ints, Words, first_of_each, words_of_packed
from matchdb.index.layout import Tree, build
from matchdb.index.liveness import Liveness, alive_stamps
from matchdb.index.search import NO_HITS, Best, sorted_hits, tree_nearest, tree_range


@dataclass(frozen=True)
class _Snapshot:
    """What a reader needs, swapped as one reference: the tree (with its tombstones as of ``generation``) and the
    delta's filled prefix (its tombstones as of the same generation). Immutable to readers (see the module
    docstring)."""

    tree: Tree
    delta_words: Words  # (capacity, nwords); rows past ``delta_count`` are unused
    delta_keys: Ints
    delta_alive: Liveness  # stamps of the delta's rows (capacity)
    delta_count: int
    live: int

    @property
    def generation(self) -> int:
        return self.tree.alive.generation

    def live_delta(self) -> Ints:
        """Rows of the delta alive in this snapshot."""
        return np.flatnonzero(self.delta_alive.prefix(self.delta_count))


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
        # Called (under the lock) instead of rebuilding in place when a rebuild is due, if set: a mapped segment's
        # owner compacts by writing the next segment (matchdb.service.segments); it returns whether it took over.
        self.on_due: Callable[[], bool] | None = None
        self._snap = self._fresh(build(nbits, np.empty((0, self.nwords), np.uint64), np.empty(0, np.int64), 0))

    def _fresh(self, tree: Tree) -> _Snapshot:
        capacity = max(64, tuning.DELTA_MIN)
        return _Snapshot(
            tree=tree,
            delta_words=np.zeros((capacity, self.nwords), np.uint64),
            delta_keys=np.zeros(capacity, np.int64),
            delta_alive=Liveness(alive_stamps(capacity)),
            delta_count=0,
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
        return snap.tree.alive.dead + snap.delta_alive.dead

    # ----- conversions -------------------------------------------------------------------------------------------

    def _words(self, value: int) -> Words:
        if value < 0 or value.bit_length() > self.nbits:
            raise ValueError(f"hash value does not fit in {self.nbits} bits")
        return np.frombuffer(value.to_bytes(self.nwords * 8, "little"), "<u8").astype(np.uint64)

    def _packed_words(self, packed: npt.NDArray[np.uint8]) -> Words:
        if packed.ndim != 2 or packed.shape[1] != self.packed_bytes or packed.dtype != np.uint8:
            raise ValueError(f"packed hashes must be an (n, {self.packed_bytes}) uint8 array")
        words = words_of_packed(packed, self.nwords)
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
            snap = self._append(self._kill_one(snap, tree_pos, delta_pos), np.array([key], np.int64), words[None, :])
            self._snap = snap
            self._rebuild_if_due(snap)

    def remove(self, key: int) -> None:
        with self._lock:
            snap = self._snap
            tree_pos, delta_pos = self._locate(snap, key)
            if tree_pos < 0 and delta_pos < 0:
                return
            self._snap = snap = self._kill_one(snap, tree_pos, delta_pos)
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
        last = first_of_each(key_array[::-1])
        if len(last) != len(key_array):
            pick = len(key_array) - 1 - last
            key_array, words = key_array[pick], words[pick]
        with self._lock:
            snap = self._snap
            if snap.live == 0 and snap.tree.size == 0 and snap.delta_count == 0:
                self._builds += 1
                self._snap = self._fresh(build(self.nbits, words, key_array, self._builds))
                return
            pos = snap.tree.positions_of(key_array)
            pos = pos[pos >= 0]
            pos = pos[snap.tree.alive.at(pos)]
            count = snap.delta_count
            delta_hit = np.flatnonzero(np.isin(snap.delta_keys[:count], key_array) & snap.delta_alive.prefix(count))
            self._snap = self._append(self._kill(snap, pos, delta_hit), key_array, words)

    def _locate(self, snap: _Snapshot, key: int) -> tuple[int, int]:
        """(tree position, delta position) of the live record of ``key``; -1 where it is not."""
        tree = snap.tree
        tree_pos = int(tree.positions_of(np.array([key], np.int64))[0])
        if tree_pos >= 0 and not tree.alive.is_alive(tree_pos):
            tree_pos = -1
        delta_pos = -1
        if tree_pos < 0 and snap.delta_count:
            count = snap.delta_count
            where = np.flatnonzero((snap.delta_keys[:count] == key) & snap.delta_alive.prefix(count))
            if len(where):
                delta_pos = int(where[0])
        return tree_pos, delta_pos

    def _kill_one(self, snap: _Snapshot, tree_pos: int, delta_pos: int) -> _Snapshot:
        none = np.empty(0, np.int64)
        if tree_pos >= 0:
            return self._kill(snap, np.array([tree_pos], np.int64), none)
        if delta_pos >= 0:
            return self._kill(snap, none, np.array([delta_pos], np.int64))
        return snap

    def _kill(self, snap: _Snapshot, tree_rows: Ints, delta_rows: Ints) -> _Snapshot:
        """The snapshot of the next generation, in which these live rows are dead (the current one still sees
        them alive: see :mod:`matchdb.index.liveness`)."""
        if not len(tree_rows) and not len(delta_rows):
            return snap
        generation = snap.generation + 1
        tree, delta = snap.tree, snap.delta_alive
        if len(tree_rows):
            stamps = tree.alive.stamps if tree.alive.stamps is not None else alive_stamps(tree.size)
            tree = replace(tree, alive=tree.alive.killed(stamps, tree_rows, generation))
        else:
            tree = replace(tree, alive=tree.alive.at_generation(generation))
        if len(delta_rows):
            assert delta.stamps is not None
            delta = delta.killed(delta.stamps, delta_rows, generation)
        else:
            delta = delta.at_generation(generation)
        return replace(snap, tree=tree, delta_alive=delta, live=snap.live - len(tree_rows) - len(delta_rows))

    def _append(self, snap: _Snapshot, keys: Ints, words: Words) -> _Snapshot:
        """Write rows past the delta's filled prefix (readers do not look there), growing it by copy if full.

        Rows past the prefix are alive (their stamps were never written), so appended rows need no stamp."""
        count, extra = snap.delta_count, len(keys)
        if count + extra > len(snap.delta_keys):
            capacity = max(2 * len(snap.delta_keys), count + extra)
            grown_words = np.zeros((capacity, self.nwords), np.uint64)
            grown_keys = np.zeros(capacity, np.int64)
            grown_stamps = alive_stamps(capacity)
            grown_words[:count] = snap.delta_words[:count]
            grown_keys[:count] = snap.delta_keys[:count]
            assert snap.delta_alive.stamps is not None
            grown_stamps[:count] = snap.delta_alive.stamps[:count]
            alive = replace(snap.delta_alive, stamps=grown_stamps)
            snap = replace(snap, delta_words=grown_words, delta_keys=grown_keys, delta_alive=alive)
        snap.delta_words[count : count + extra] = words
        snap.delta_keys[count : count + extra] = keys
        return replace(snap, delta_count=count + extra, live=snap.live + extra)

    def _due(self, snap: _Snapshot) -> bool:
        size = snap.tree.size
        too_many_new = snap.delta_count > max(tuning.DELTA_MIN, tuning.DELTA_SHARE * size)
        return too_many_new or snap.tree.alive.dead > max(tuning.DELTA_MIN, tuning.DEAD_SHARE * size)

    def _rebuild_if_due(self, snap: _Snapshot) -> None:
        if self._due(snap) and not (self.on_due is not None and self.on_due()):
            self.rebuild()

    @property
    def tree(self) -> Tree:
        """The built tree of the current snapshot (what a segment stores, right after a build)."""
        return self._snap.tree

    @property
    def pending(self) -> int:
        """Records in the delta (added since the tree was built, alive or not)."""
        return self._snap.delta_count

    def load_tree(self, tree: Tree) -> None:
        """Serve a built tree (e.g. mapped from a segment) with an empty delta, replacing everything."""
        if tree.nbits != self.nbits:
            raise ValueError("the tree is of another hash length")
        with self._lock:
            self._builds += 1
            self._snap = self._fresh(tree)

    def rebuild(self) -> None:
        """Rebuild the tree from the live records; readers keep the old snapshot until the new one is swapped in."""
        with self._lock:
            snap = self._snap
            tree, live = snap.tree, snap.live_delta()
            alive = tree.alive.prefix(tree.size)
            words = np.concatenate([tree.words[alive], snap.delta_words[live]])
            keys = np.concatenate([tree.keys[alive], snap.delta_keys[live]])
            self._builds += 1
            self._snap = self._fresh(build(self.nbits, words, keys, self._builds))

    def _reader_snapshot(self) -> _Snapshot:
        """The current snapshot, after a rebuild if one is due and no writer is busy (readers never wait)."""
        snap = self._snap
        if self._due(snap) and self._lock.acquire(blocking=False):
            try:
                if self._due(self._snap) and not (self.on_due is not None and self.on_due()):
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
            return NO_HITS
        radius = min(max_bits, self.nbits)
        snap = self._reader_snapshot()
        distance = Distance(self._query_words(query))
        bits, keys = tree_range(snap.tree, distance, radius)
        count = snap.delta_count
        if count:
            delta_bits = distance(snap.delta_words[:count])
            near = np.flatnonzero((delta_bits <= radius) & snap.delta_alive.prefix(count))
            bits = np.concatenate([bits, delta_bits[near].astype(np.int64)])
            keys = np.concatenate([keys, snap.delta_keys[near]])
        return sorted_hits(bits, keys, self.nbits)

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
            return NO_HITS
        snap = self._reader_snapshot()
        distance = Distance(self._query_words(query))
        best = Best(k, limit, accept)
        tree = snap.tree
        if snap.delta_count:
            live = snap.live_delta()
            best.offer(tree.size + live, distance(snap.delta_words[live]), snap.delta_keys[live])
        tree_nearest(tree, distance, best)
        return best.bits, best.keys
