"""Block tables (multi-index hashing) over the numpy tree's records, for hashes of any length.

Each of ``m`` tables takes a substring of the hash: an aligned unit of its bytes (two bytes of a one-word hash;
four bytes of a long one, the tables' units spread over the hash), disjoint between tables. The substring's low
``key`` bits (log2(n) - ``KEY_SLACK``, rounded down: a bucket holds 8 to 16 records) pick a bucket; the next
``extra`` bits are kept in the entry next to the record's tree position, as a filter read before any hash is. A
record within ``r`` bits of the query has, in some table, a substring within ``r // m`` bits of the query's
(pigeonhole): the search reads only the buckets whose key is that near, keeps the entries whose key and extra
bits together are that near, and compares the whole hashes of the few left.

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
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from matchdb.index import tuning
from matchdb.index.kernels import Counts, Distance, Ints, Words, runs

NO_HITS: tuple[Ints, Ints] = (np.empty(0, np.int64), np.empty(0, np.int64))
_PLANS_KEPT = 256
_ENTRY_BITS = 32  # an entry is a uint32: tree position in the high bits, extra bits of the substring in the low
_MAX_BYTES = 4  # bytes per substring (so that it fits in a uint32 next to nothing else)

Plan = tuple[Ints, Ints, Ints]  # per probe: key XOR mask, table (its place in the steps' order), extra bits' weight


class QueryParts(NamedTuple):
    """A query's key and extra bits in each table, and each table's offsets base, in the steps' order."""

    keys: Ints
    extras: Ints
    bases: Ints


@dataclass(frozen=True)
class BlockTables:
    """All tables' entries in one array of ``m * n`` entries (table t's are ``t * n ..``, in bucket order); bucket
    ``v`` of table t is entries ``offsets[bases[t] + v] : offsets[bases[t] + v + 1]``."""

    size: int
    reach: int  # radius up to which the tables are meant to answer (any radius, for one-word hashes)
    units: list[tuple[int, int]]  # each table's substring: (first byte, bytes), an aligned 1, 2 or 4 bytes
    key_bits: list[int]
    extra_bits: list[int]
    pos_shift: int  # entry = position << pos_shift | extra bits
    entries: npt.NDArray[np.uint32]
    offsets: npt.NDArray[np.signedinteger]
    bases: Ints
    words: Words | None  # one-word hashes: a copy of each entry's hash, so buckets are checked without a gather
    plans: dict[tuple[int, int], tuple[int, Plan | None]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.key_bits)

    @property
    def alike(self) -> bool:
        """Whether every table has the same key and extra bits (then the steps may take them in any order)."""
        return len(set(self.key_bits)) == 1 and len(set(self.extra_bits)) == 1

    @property
    def nbytes(self) -> int:
        return self.entries.nbytes + self.offsets.nbytes + (self.words.nbytes if self.words is not None else 0)

    def query_parts(self, query: Words) -> QueryParts:
        """The query's bucket key and extra bits in each table, the tables in the order the steps take them.

        That order is the query's own: the tables whose exact bucket for it is smallest first (when the tables are
        alike). The pigeonhole holds for any order, and the first rounds then read the least crowded buckets: real
        hashes are far from uniform (many photos share a sky or a white background), and a near duplicate found
        in a small bucket shrinks the radius before a crowded one is read. The key bits come from Python ints (a
        few dozen small steps cost less than as many numpy calls)."""
        data = query.tobytes()
        keys, extras = [], []
        for table, (start, width) in enumerate(self.units):
            value = int.from_bytes(data[start : start + width], "little")
            keys.append(value & ((1 << self.key_bits[table]) - 1))
            extras.append((value >> self.key_bits[table]) & ((1 << self.extra_bits[table]) - 1))
        key_array = np.array(keys, np.int64)
        buckets = self.bases + key_array
        order = np.arange(self.count)
        if self.alike:
            order = np.argsort(self.offsets[buckets + 1] - self.offsets[buckets], kind="stable")
        return QueryParts(key_array[order], np.array(extras, np.int64)[order], self.bases[order])

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


def table_units(nbits: int) -> list[tuple[int, int]]:
    """Each table's substring as (first byte, bytes): aligned units of 1, 2 or 4 bytes, so that building reads one
    strided column per table (gathering scattered bytes of ten million records costs minutes). One-word hashes
    are cut into units of ``BLOCK_BYTES``; long ones get as many tables as their near radius needs (module
    docstring), each a unit of up to 4 bytes, spread over the hash (different parts of the image)."""
    nbytes = (nbits + 7) // 8
    if nbits <= 64:
        width = tuning.BLOCK_BYTES  # 1, 2 or 4
        return [(start, width) for start in range(0, nbytes, width)]
    reach = int(tuning.NEAR_SHARE * nbits)
    count = min(nbytes, -(-(reach + 1) // (tuning.TABLE_RADIUS + 1)))
    width = 1 << (min(_MAX_BYTES, nbytes // count).bit_length() - 1)  # a power of two
    units = nbytes // width  # whole units inside the hash; at least ``count``
    return [((table * units // count) * width, width) for table in range(count)]


def _layout(nbits: int, n: int) -> tuple[list[tuple[int, int]], list[int], list[int], int]:
    """Each table's unit, key bits and extra bits, and the entries' position shift, for ``n`` records."""
    units = table_units(nbits)
    pos_bits = max(1, (n - 1).bit_length())
    pos_shift = _ENTRY_BITS - pos_bits
    key_width = min(tuning.KEY_MAX, max(tuning.KEY_MIN, max(n, 1).bit_length() - 1 - tuning.KEY_SLACK))
    key_bits = [min(key_width, 8 * width) for _, width in units]
    extra_bits = [min(8 * width - k, pos_shift) for (_, width), k in zip(units, key_bits, strict=True)]
    return units, key_bits, extra_bits, pos_shift


def _substrings(words: Words, unit: tuple[int, int]) -> npt.NDArray[np.uint64]:
    """Each record's substring of one table (its unit of bytes, little-endian)."""
    start, width = unit
    column = words.view(f"<u{width}").reshape(len(words), words.shape[1] * 8 // width)[:, start // width]
    return column.astype(np.uint64)


def first_table_order(nbits: int, words: Words) -> Ints:
    """The records' order by the first table's key (stable): one-word hashes are kept in it."""
    units, key_bits, _, _ = _layout(nbits, len(words))
    value = _substrings(words, units[0])
    key = value & np.uint64((1 << key_bits[0]) - 1)
    order: Ints = np.argsort(key.astype(np.uint16 if key_bits[0] <= 16 else np.uint32), kind="stable")
    return order


def build_tables(nbits: int, words: Words, copies: bool = False) -> BlockTables:
    """Bucket the records (rows of ``words``, in tree order) by each table's key, entries in position order; with
    ``copies`` (one-word hashes) each entry also gets a copy of its hash."""
    n = len(words)
    if n >= 1 << _ENTRY_BITS:
        raise ValueError("too many records for one index")
    units, key_bits, extra_bits, pos_shift = _layout(nbits, n)
    spans = [(1 << k) + 1 for k in key_bits]
    bases = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
    offsets: npt.NDArray[np.signedinteger] = np.empty(sum(spans), np.int32 if len(units) * n < 2**31 else np.int64)
    entries = np.empty(len(units) * n, np.uint32)
    copied = np.empty(len(units) * n, np.uint64) if copies else None
    positions = np.arange(n, dtype=np.uint64) << np.uint64(pos_shift)
    for table, unit in enumerate(units):
        value = _substrings(words, unit)
        key = value & np.uint64((1 << key_bits[table]) - 1)
        extra = (value >> np.uint64(key_bits[table])) & np.uint64((1 << extra_bits[table]) - 1)
        counts = np.bincount(key.astype(np.intp), minlength=spans[table] - 1)
        start = int(bases[table])
        offsets[start : start + spans[table]] = table * n + np.concatenate([[0], np.cumsum(counts)])
        ordered = np.sort((key << np.uint64(_ENTRY_BITS)) | positions | extra)  # by key, then position
        entries[table * n : (table + 1) * n] = ordered & np.uint64(0xFFFFFFFF)
        if copied is not None:
            copied[table * n : (table + 1) * n] = words[entries[table * n : (table + 1) * n] >> np.uint32(pos_shift), 0]
    reach = nbits if nbits <= 64 else int(tuning.NEAR_SHARE * nbits)
    return BlockTables(n, reach, units, key_bits, extra_bits, pos_shift, entries, offsets, bases, copied)


def block_hits(
    tables: BlockTables,
    words: Words,
    distance: Distance,
    parts: QueryParts,
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
    buckets = (masks ^ parts.keys[table_of]) + parts.bases[table_of]
    first = tables.offsets[buckets]
    last = tables.offsets[buckets + 1]
    sizes = last - first
    cost = float(probes + int(sizes.sum()))
    if cost > budget:
        return None
    rows = runs(first, last)
    if any(tables.extra_bits):  # keep the entries whose extra bits make up the step's weight
        probe = np.repeat(np.arange(len(masks)), sizes)
        wanted = parts.extras[table_of].astype(np.uint32)
        extra = np.bitwise_and(tables.entries[rows] ^ wanted[probe], (1 << tables.pos_shift) - 1)
        rows = rows[np.bitwise_count(extra) == target[probe]]
    if tables.words is not None:  # the hashes are right there
        bits: Counts = np.bitwise_count(tables.words[rows] ^ distance.scalar)
        near = np.flatnonzero(bits <= radius)
        pos = (tables.entries[rows[near]] >> np.uint32(tables.pos_shift)).astype(np.int64)
        bits = bits[near]
        if len(pos) > 1:  # a record can be found in several tables
            order = np.argsort(pos, kind="stable")
            first_finds = _fresh(pos[order])
            pos, bits = pos[order][first_finds], bits[order][first_finds]
        return pos, bits.astype(np.int64), cost
    entries = tables.entries[rows]
    cost += tuning.GATHER_COST * len(entries)
    if cost > budget:
        return None
    pos = np.sort(entries >> np.uint32(tables.pos_shift)).astype(np.int64)
    if len(pos) > 1:  # a record can be found in several tables
        pos = pos[_fresh(pos)]
    bits = distance(np.take(words, pos, axis=0))
    near = np.flatnonzero(bits <= radius)
    return pos[near], bits[near].astype(np.int64), cost


def _fresh(ordered: Ints) -> npt.NDArray[np.bool_]:
    """Which of these sorted values differ from the one before (the first of each run)."""
    fresh = np.empty(len(ordered), np.bool_)
    fresh[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=fresh[1:])
    return fresh


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
