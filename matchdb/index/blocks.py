"""Block tables (multi-index hashing) over the numpy tree's records, for hashes of any length.

Each of ``m`` tables takes a substring of the hash: a few of its bytes (two neighbouring bytes of a one-word hash;
four bytes spread over a long one, so that they come from different parts of the image), disjoint between
tables. The substring's low ``key`` bits (about log2(n) - ``KEY_SLACK``: a bucket holds a few records) pick a
bucket; the next ``extra`` bits are kept in the entry next to the record's tree position, as a filter read before
any hash is. A record within ``r`` bits of the query has, in some table, a substring within ``r // m`` bits of
the query's (pigeonhole): the search reads only the buckets whose key is that near, keeps the entries whose key
and extra bits together are that near, and compares the whole hashes of the few left.

Steps, as in multi-index hashing with tables of unequal radii: step ``t`` looks, in table ``t % m``, at the
records whose substring differs from the query's in exactly ``t // m`` bits. After steps ``0..R`` every record
within ``R`` bits has been found: were one missed, its substring in table ``b`` would differ in more than
``(R - b) // m`` bits, and those numbers add up to ``R + 1``. So a radius search runs steps ``0..r``, and a
k-nearest search runs them in rounds until the k-th best distance is certified.

For long hashes the tables are sized for near-duplicate radii (up to ``NEAR_SHARE`` of the bits, each table probed
at about ``TABLE_RADIUS`` bits there), where the pivot tree cannot prune hashes that look random; beyond, or
when the buckets are crowded (real hashes are far from uniform), the search uses the pivot tree instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning
from matchdb.index.kernels import Distance, Ints, Words, runs

NO_HITS: tuple[Ints, Ints] = (np.empty(0, np.int64), np.empty(0, np.int64))
_PLANS_KEPT = 256
_ENTRY_BITS = 32  # an entry is a uint32: tree position in the high bits, extra bits of the substring in the low
_MAX_BYTES = 4  # bytes per substring (so a substring fits in a uint32)

Plan = tuple[Ints, Ints, Ints]  # per probe: key XOR mask, table, weight of the extra bits


@dataclass(frozen=True)
class BlockTables:
    """All tables' entries in one array of ``m * n`` entries (table t's are ``t * n ..``, in bucket order); bucket
    ``v`` of table t is entries ``offsets[bases[t] + v] : offsets[bases[t] + v + 1]``."""

    size: int
    reach: int  # radius up to which the tables are meant to answer (any radius, for one-word hashes)
    byte_index: npt.NDArray[np.intp]  # (m, 4): the bytes of each table's substring (index nbytes = a zero byte)
    key_bits: list[int]
    extra_bits: list[int]
    pos_shift: int  # entry = position << pos_shift | extra bits
    entries: npt.NDArray[np.uint32]
    offsets: npt.NDArray[np.signedinteger]
    bases: Ints
    plans: dict[tuple[int, int], tuple[int, Plan | None]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.key_bits)

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes + self.offsets.nbytes

    def query_parts(self, query: Words) -> tuple[Ints, Ints]:
        """The query's bucket key and extra bits in each table."""
        padded = np.append(query.view(np.uint8), np.uint8(0))
        values = padded[self.byte_index].view("<u4").reshape(-1).astype(np.int64)
        keys = np.array(self.key_bits, np.int64)
        extras = (values >> keys) & ((1 << np.array(self.extra_bits, np.int64)) - 1)
        return values & ((1 << keys) - 1), extras

    def steps(self, low: int, high: int) -> list[tuple[int, int]]:
        """(table, substring weight) of steps ``low..high`` that can find anything (the weight fits the table)."""
        count = self.count
        found = []
        for step in range(max(0, low), high + 1):
            table, weight = step % count, step // count
            if weight <= self.key_bits[table] + self.extra_bits[table]:
                found.append((table, weight))
        return found

    def plan(self, low: int, high: int, budget: float) -> tuple[int, Plan | None]:
        """For steps ``low..high``: how many buckets they read, and unless that is more than ``budget``, each
        bucket (the XOR of its key with the query's, and its table) with the weight its entries' extra bits must
        have. Plans are kept (a bounded number) since they depend only on the steps."""
        known = self.plans.get((low, high))
        if known is not None and (known[1] is not None or known[0] > budget):
            return known
        steps = self.steps(low, high)
        probes = sum(_probe_count(self.key_bits[t], self.extra_bits[t], w) for t, w in steps)
        plan: Plan | None = None
        if not steps:
            plan = (NO_HITS[0], NO_HITS[0], NO_HITS[0])
        elif probes <= budget:
            parts = [_step(self.key_bits[t], self.extra_bits[t], w) for t, w in steps]
            tables = np.repeat(np.array([t for t, _ in steps], np.int64), [len(p[0]) for p in parts])
            plan = (np.concatenate([p[0] for p in parts]), tables, np.concatenate([p[1] for p in parts]))
        if len(self.plans) >= _PLANS_KEPT:
            self.plans.clear()
        self.plans[(low, high)] = (probes, plan)
        return probes, plan


def table_bytes(nbits: int) -> list[list[int]]:
    """Which bytes of the hash make each table's substring (see the module docstring)."""
    nbytes = (nbits + 7) // 8
    if nbits <= 64:
        width = tuning.BLOCK_BYTES
        return [list(range(start, min(start + width, nbytes))) for start in range(0, nbytes, width)]
    reach = int(tuning.NEAR_SHARE * nbits)
    count = min(nbytes, -(-(reach + 1) // (tuning.TABLE_RADIUS + 1)))
    per_table = min(_MAX_BYTES, nbytes // count)
    stride = nbytes // per_table  # >= count: the tables' bytes are disjoint
    return [[table + j * stride for j in range(per_table)] for table in range(count)]


def build_tables(nbits: int, words: Words) -> BlockTables:
    """Bucket the records (rows of ``words``, in tree order) by each table's key, entries in position order."""
    n, nwords = words.shape
    if n >= 1 << _ENTRY_BITS:
        raise ValueError("too many records for one index")
    groups = table_bytes(nbits)
    pos_bits = max(1, (n - 1).bit_length())
    pos_shift = _ENTRY_BITS - pos_bits
    key_width = min(tuning.KEY_MAX, max(tuning.KEY_MIN, pos_bits - tuning.KEY_SLACK))
    key_bits = [min(key_width, 8 * len(g)) for g in groups]
    extra_bits = [min(8 * len(g) - k, pos_shift) for g, k in zip(groups, key_bits, strict=True)]
    spans = [(1 << k) + 1 for k in key_bits]
    bases = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
    offsets = np.empty(sum(spans), np.int32 if len(groups) * n < 2**31 else np.int64)
    entries = np.empty(len(groups) * n, np.uint32)
    as_bytes = words.view(np.uint8).reshape(n, nwords * 8)
    positions = np.arange(n, dtype=np.uint64) << np.uint64(pos_shift)
    for table, group in enumerate(groups):
        padded = np.zeros((n, _MAX_BYTES), np.uint8)
        padded[:, : len(group)] = as_bytes[:, group]
        value = padded.view("<u4").reshape(n).astype(np.uint64)
        key = value & np.uint64((1 << key_bits[table]) - 1)
        extra = (value >> np.uint64(key_bits[table])) & np.uint64((1 << extra_bits[table]) - 1)
        counts = np.bincount(key.astype(np.intp), minlength=spans[table] - 1)
        start = int(bases[table])
        offsets[start : start + spans[table]] = table * n + np.concatenate([[0], np.cumsum(counts)])
        ordered = np.sort((key << np.uint64(_ENTRY_BITS)) | positions | extra)  # by key, then position
        entries[table * n : (table + 1) * n] = ordered & np.uint64(0xFFFFFFFF)
    byte_index = np.full((len(groups), _MAX_BYTES), nwords * 8, np.intp)
    for table, group in enumerate(groups):
        byte_index[table, : len(group)] = group
    reach = nbits if nbits <= 64 else int(tuning.NEAR_SHARE * nbits)
    return BlockTables(n, reach, byte_index, key_bits, extra_bits, pos_shift, entries, offsets, bases)


def block_hits(
    tables: BlockTables,
    words: Words,
    distance: Distance,
    parts: tuple[Ints, Ints],
    steps: tuple[int, int],
    radius: int,
    budget: float,
) -> tuple[Ints, Ints, float] | None:
    """(tree positions, bits) of the records within ``radius`` among those steps ``low..high`` find, each once,
    in position order, and what that cost: buckets and entries read, plus ``GATHER_COST`` per hash compared.
    ``parts`` are the query's (``tables.query_parts``). None as soon as the cost would pass ``budget`` (what is
    spent by then is at most about the budget)."""
    probes, plan = tables.plan(steps[0], steps[1], budget)
    if plan is None:
        return None
    masks, table_of, target = plan
    if not len(masks):
        return NO_HITS[0], NO_HITS[1], 0.0
    query_keys, query_extras = parts
    buckets = (masks ^ query_keys[table_of]) + tables.bases[table_of]
    first = tables.offsets[buckets]
    last = tables.offsets[buckets + 1]
    sizes = last - first
    cost = float(probes + int(sizes.sum()))
    if cost > budget:
        return None
    entries = tables.entries[runs(first, last)]
    if tables.pos_shift:
        probe = np.repeat(np.arange(len(masks)), sizes)
        wanted = query_extras[table_of].astype(np.uint32)
        extra = np.bitwise_and(entries ^ wanted[probe], (1 << tables.pos_shift) - 1)
        entries = entries[np.bitwise_count(extra) == target[probe]]
    cost += tuning.GATHER_COST * len(entries)
    if cost > budget:
        return None
    pos = np.sort(entries >> np.uint32(tables.pos_shift)).astype(np.int64)
    if len(pos) > 1:  # a record can be found in several tables
        fresh = np.empty(len(pos), np.bool_)
        fresh[0] = True
        np.not_equal(pos[1:], pos[:-1], out=fresh[1:])
        pos = pos[fresh]
    bits = distance(np.take(words, pos, axis=0))
    near = np.flatnonzero(bits <= radius)
    return pos[near], bits[near].astype(np.int64), cost


@lru_cache(maxsize=4096)
def _probe_count(key_bits: int, extra_bits: int, weight: int) -> int:
    return sum(math.comb(key_bits, i) for i in range(max(0, weight - extra_bits), min(key_bits, weight) + 1))


@lru_cache(maxsize=256)
def _step(key_bits: int, extra_bits: int, weight: int) -> tuple[Ints, Ints]:
    """One step's probes in a table: every key XOR mask of ``i`` bits (``weight - extra_bits <= i <= weight``),
    and the weight ``weight - i`` the entries' extra bits must then have."""
    flips = range(max(0, weight - extra_bits), min(key_bits, weight) + 1)
    masks = [_masks(key_bits, i) for i in flips]
    step = (np.concatenate(masks), np.repeat(weight - np.array(flips, np.int64), [len(m) for m in masks]))
    for array in step:
        array.setflags(write=False)
    return step


@lru_cache(maxsize=256)
def _masks(width: int, flips: int) -> Ints:
    """Every ``width``-bit value with exactly ``flips`` bits set (one row of XOR masks), built a bit at a time."""
    masks = np.zeros(1, np.int64)
    top = np.full(1, -1, np.int64)  # highest set bit of each mask
    for _ in range(flips):
        below = [np.flatnonzero(top < bit) for bit in range(width)]
        masks = np.concatenate([masks[b] | (1 << bit) for bit, b in enumerate(below)] + [np.empty(0, np.int64)])
        top = np.concatenate([np.full(len(b), bit, np.int64) for bit, b in enumerate(below)] + [np.empty(0, np.int64)])
    masks.setflags(write=False)
    return masks
