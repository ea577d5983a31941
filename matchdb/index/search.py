"""Exact searches over one built tree (:mod:`matchdb.index.layout`): every record within a radius, and the k nearest
with a radius that shrinks as answers are found. Each picks the block tables, the pivot walk or a plain scan,
whichever reads least; the delta and the public API are :class:`matchdb.index.numpy_tree.NumpyTreeIndex`'s."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from matchdb.index import scan, tuning
from matchdb.index.blocks import NO_HITS, block_hits
from matchdb.index.kernels import Counts, Distance, Ints, first_of_each, runs
from matchdb.index.layout import Tree

__all__ = ["NO_HITS", "Best", "sorted_hits", "tree_nearest", "tree_range"]


class Best:
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
        first = first_of_each(ids)  # a record can come twice (pivot and leaf, or two block tables)
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


def sorted_hits(bits: Ints, keys: Ints, nbits: int) -> tuple[Ints, Ints]:
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


def tree_range(tree: Tree, distance: Distance, radius: int) -> tuple[Ints, Ints]:
    """(bits, keys) of the live tree records within ``radius`` of the query, in no particular order."""
    if tree.size == 0:
        return NO_HITS
    found = None
    if tree.size >= _small_blocks(tree)[0] and radius <= tree.blocks.reach:
        parts = tree.blocks.query_parts(distance.query)
        hits = block_hits(tree.blocks, tree.words, distance, parts, (0, radius), radius, _block_budget(tree))
        if hits is not None:
            pos, bits, _ = hits
            alive = tree.alive.at(pos)
            return bits[alive], tree.key_at(pos[alive])
    if tree.pivot is not None and tree.size >= tuning.SMALL_PIVOTS[0]:
        found = _pivot_runs(tree, distance, radius)
    # pruning keeps too much: a plain scan is faster (compiled for long hashes; numpy's is as fast on one word)
    if found is None and tree.words.shape[1] > 1 and scan.available():
        pos, bits = scan.scan(tree.words, distance.query, tree.alive, tree.nbits, radius)
        return bits, tree.key_at(pos)
    if found is None:
        counts = distance(tree.words)
        pos = np.flatnonzero(counts <= radius)
        pos = pos[tree.alive.at(pos)]
        return counts[pos].astype(np.int64), tree.key_at(pos)
    counts = distance(np.take(tree.words, found, axis=0))
    near = np.flatnonzero(counts <= radius)
    pos = found[near]
    alive = tree.alive.at(pos)
    return counts[near][alive].astype(np.int64), tree.key_at(pos[alive])


def _small_blocks(tree: Tree) -> tuple[int, int]:
    """Below these sizes (radius search, k nearest) a scan costs less than the block tables' fixed cost."""
    return tuning.SMALL_NEAR if tree.pivot is not None else tuning.SMALL_BLOCKS


def _block_budget(tree: Tree) -> float:
    """Buckets and entries the block tables may read before the pivot tree (long hashes) or a scan (one-word
    hashes) is the cheaper way."""
    if tree.pivot is None:
        return tuning.BLOCK_LINEAR_SHARE * tree.size
    return max(tuning.BLOCK_TREE_MIN, tuning.BLOCK_TREE_SHARE * tree.size)


def _pivot_runs(tree: Tree, distance: Distance, radius: int) -> Ints | None:
    """Tree positions the pivot tree cannot rule out for ``radius``; None when that is most of them."""
    assert tree.pivot is not None
    pivot = tree.pivot
    span = tree.nbits + 1
    frontier = np.zeros(1, np.int64)
    levels = len(pivot.pivots)
    for level in range(levels - 1):
        near = distance(np.take(pivot.pivots[level], frontier, axis=0)).astype(np.int64)
        base = frontier * span
        frontier = runs(
            np.searchsorted(pivot.hi_keys[level], base + np.maximum(near - radius, 0), side="left"),
            np.searchsorted(pivot.lo_keys[level], base + np.minimum(near + radius, tree.nbits), side="right"),
        )
        if not len(frontier):
            return frontier
    near = distance(np.take(pivot.pivots[-1], frontier, axis=0)).astype(np.int64)
    return _leaf_candidates(tree, frontier, near, radius)


def _leaf_candidates(tree: Tree, leaves: Ints, near: Ints, radius: int) -> Ints | None:
    """Records of ``leaves`` whose distance to their leaf's pivot is within ``radius`` of the query's (``near``).

    This reads 2 bytes per record instead of a whole hash, and leaves few hashes to compare; None when the
    records left are more than a plain scan would cost.
    """
    assert tree.pivot is not None
    starts = tree.pivot.leaf_starts
    first, last = starts[leaves], starts[leaves + 1]
    if int((last - first).sum()) > tuning.LEAF_SCAN_SHARE * tree.size:
        return None
    candidates = runs(first, last)
    gap = tree.pivot.leaf_distance[candidates] - np.repeat(near, last - first)
    found = candidates[np.abs(gap) <= radius]
    return None if len(found) > tuning.LINEAR_SHARE * tree.size else found


def tree_nearest(tree: Tree, distance: Distance, best: Best) -> None:
    """Offer ``best`` every live tree record that can be among the k nearest."""
    if tree.size == 0:
        return
    if tree.size >= _small_blocks(tree)[1] and _block_nearest(tree, distance, best):
        return
    if tree.pivot is not None and tree.size >= tuning.SMALL_PIVOTS[1] and tree.pivot.walks.worth_walking():
        tree.pivot.walks.walked(ended_in_scan=_pivot_nearest(tree, distance, best))
    else:
        _linear_nearest(tree, distance, best)


def _offer_positions(tree: Tree, distance: Distance, best: Best, found: Ints) -> None:
    """Offer ``best`` the records at these tree positions. Long hashes through the compiled scan: the positions come
    in runs (leaves), which it reads in place, where numpy would gather them into a copy first (the slow tail of the
    pivot walk: a third of the records gathered took 4x a whole scan)."""
    if tree.words.shape[1] > 1 and scan.available():
        k = best.k if best.accept is None else None  # with a filter, every record within the radius
        pos, bits = scan.scan(tree.words, distance.query, tree.alive, tree.nbits, best.radius, k, rows=found)
        best.offer(pos, bits, tree.key_at(pos))
        return
    bits = distance(np.take(tree.words, found, axis=0))
    near = np.flatnonzero(bits <= best.radius)
    pos = found[near]
    alive = tree.alive.at(pos)
    best.offer(pos[alive], bits[near][alive], tree.key_at(pos[alive]))


def _block_nearest(tree: Tree, distance: Distance, best: Best) -> bool:
    """Steps of the block search in rounds until the k-th best distance is certified (every record within it has
    been found). The rounds grow (1, 2, 4 ... steps, at most one more differing bit per table): a near duplicate
    found early shrinks the radius before most steps are run. False when certifying needs more than the tables'
    reach, or a round more than the budget (the caller goes on from what ``best`` holds)."""
    count = tree.blocks.count
    budget = _block_budget(tree)
    parts = tree.blocks.query_parts(distance.query)
    done, width = -1, 1
    while done < best.limit and best.radius > done:
        if done >= tree.blocks.reach:
            return False
        high = min(best.limit, best.radius, done + width, tree.blocks.reach)
        hits = block_hits(tree.blocks, tree.words, distance, parts, (done + 1, high), best.radius, budget)
        if hits is None:
            return False
        pos, bits, _ = hits
        alive = tree.alive.at(pos)
        best.offer(pos[alive], bits[alive], tree.key_at(pos[alive]))
        done, width = high, count
    return True


def _pivot_nearest(tree: Tree, distance: Distance, best: Best) -> bool:
    """The pivot walk with a radius that shrinks as it goes.

    Pivots are records, so each level's pivot distances are offered first (tightening the radius before the
    children are chosen); each child keeps a lower bound (the largest gap between its distance range and the
    query's distance to an ancestor's pivot). Leaves are scanned in order of their lower bound, in growing batches,
    the radius being re-read before each batch. True when it gave up and scanned everything instead.
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
        live = tree.alive.at(pivot_pos)
        best.offer(pivot_pos[live], near[live], tree.key_at(pivot_pos[live]))
        if level == levels - 1:
            break
        radius = best.radius
        base = frontier * span
        first = np.searchsorted(pivot.hi_keys[level], base + np.maximum(near - radius, 0), side="left")
        last = np.searchsorted(pivot.lo_keys[level], base + np.minimum(near + radius, tree.nbits), side="right")
        children = runs(first, last)
        parent = np.repeat(np.arange(len(frontier)), last - first)
        parent_near = near[parent]
        low = pivot.lo_keys[level][children] - base[parent]
        high = pivot.hi_keys[level][children] - base[parent]
        gap = np.maximum(np.maximum(low - parent_near, parent_near - high), bound[parent])
        keep = gap <= best.radius
        frontier, bound = children[keep], gap[keep]
        if not len(frontier):
            return False
    # First the leaves with the smallest lower bounds (usually where the answers are): that tightens the radius.
    order = np.argsort(bound, kind="stable")
    frontier, bound, near = frontier[order], bound[order], near[order]
    starts = pivot.leaf_starts
    sizes = starts[frontier + 1] - starts[frontier]
    head = int(np.searchsorted(np.cumsum(sizes), max(tuning.FIRST_LEAVES, 16 * best.k), side="left")) + 1
    found = _leaf_candidates(tree, frontier[:head], near[:head], best.radius)
    if found is None:
        _linear_nearest(tree, distance, best)
        return True
    _offer_positions(tree, distance, best, found)
    # Then every other leaf still in reach, filtered per record (2 bytes each) before any hash is read: if most
    # records pass, a plain scan is cheaper, and this cost only a small share of one.
    radius = best.radius
    rest = np.arange(head, len(frontier))
    rest = rest[bound[rest] <= radius]
    if int(sizes[rest].sum()) > tuning.LEAF_SCAN_SHARE * tree.size or _most_pass(
        tree, frontier[rest], near[rest], radius
    ):
        _linear_nearest(tree, distance, best)
        return True
    candidates = runs(starts[frontier[rest]], starts[frontier[rest] + 1])
    gap = np.abs(pivot.leaf_distance[candidates] - np.repeat(near[rest], sizes[rest]))
    low = np.maximum(gap, np.repeat(bound[rest], sizes[rest]))  # a lower bound of each record's distance
    keep = np.flatnonzero(low <= radius)
    if len(keep) > tuning.LINEAR_SHARE * tree.size:
        _linear_nearest(tree, distance, best)
        return True
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
    return False


def _most_pass(tree: Tree, leaves: Ints, near: Ints, radius: int) -> bool:
    """Whether more than ``tuning.LINEAR_SHARE`` of all records would pass the leaves' filter, judged on every 16th leaf
    (so a query that ends up scanning everything does not first filter everything)."""
    if len(leaves) < 256:
        return False
    found = _leaf_candidates(tree, leaves[::16], near[::16], radius)
    return found is None or 16 * len(found) > 1.2 * tuning.LINEAR_SHARE * tree.size


def _linear_nearest(tree: Tree, distance: Distance, best: Best) -> None:
    """k nearest by scanning every record: when the filter would keep most of them anyway.

    Compiled (:mod:`matchdb.index.scan`): the scan keeps the k nearest (ties included) and ``best`` takes them.
    With ``accept``, the scan keeps the 4k nearest, then 16k ..., until the k-th accepted one is nearer than the
    farthest kept (or every record within the limit was kept). Without numba, numpy as below."""
    if scan.available():
        wanted = best.k if best.accept is None else 4 * best.k
        while True:
            pos, bits = scan.scan(tree.words, distance.query, tree.alive, tree.nbits, best.radius, wanted)
            best.offer(pos, bits, tree.key_at(pos))
            if best.accept is None or len(pos) < wanted or best.radius <= int(bits.max()):
                return
            wanted *= 4
    _numpy_linear_nearest(tree, distance, best)


def _numpy_linear_nearest(tree: Tree, distance: Distance, best: Best) -> None:
    """k nearest by scanning every record with numpy.

    The k-th distance comes from a histogram of the distances (``bincount``, linear) rather than a partition.
    With ``accept``, records are offered in growing shells of distance, so it is asked about few beyond the k-th.
    """
    bits = distance(tree.words)
    clean = tree.alive.clean  # no tombstones: skip the masks
    counts = np.bincount(bits if clean else bits[tree.alive.prefix(tree.size)], minlength=tree.nbits + 1)
    histogram = np.cumsum(counts[: best.radius + 1])
    total = int(histogram[-1])
    wanted = best.k if best.accept is None else 4 * best.k
    while True:
        shell = int(np.searchsorted(histogram, min(wanted, total), side="left"))
        pos = np.flatnonzero(bits <= shell)
        if not clean:
            pos = pos[tree.alive.at(pos)]
        best.offer(pos, bits[pos], tree.key_at(pos))
        # done once every record within the k-th distance was offered
        if best.radius <= shell or wanted >= total:
            return
        wanted *= 4
