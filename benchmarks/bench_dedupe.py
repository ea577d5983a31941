"""Grouping speed of ``matchdb dedupe`` at folder scale (100k images by default), without hashing any image.

Hashes come from ``benchmarks/hashgen.py`` (realistic bmh1/phash hashes with near-duplicate groups, derived from the
photo corpus), so the pair search meets the distance spread of real photos. With ``--dihedral`` each image also
gets 7 more query hashes, derived unrelated hashes standing in for its other orientations (what a turned photo's
hash is to the plain ones). Prints the grouping time (searches included) per hash type and range.

    .venv/bin/python -m benchmarks.bench_dedupe --corpus ../shared/corpus --images 100000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import hashgen
from benchmarks.bench_index import LinearScan
from matchdb.dedupe.collect import ORIENTATIONS, HashTable, Source
from matchdb.dedupe.grouping import group_duplicates
from matchdb.hashing import NBITS
from matchdb.index import NumpyTreeIndex
from matchdb.index.kernels import words_of_packed
from matchdb.service.collections import max_bits_within


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="the photo corpus (with photos/ and large/)")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--ranges", default="bmh1:2,bmh1:10,phash:10", help="kind:range,... to time")
    parser.add_argument("--dihedral", action="store_true", help="8 query hashes per image")
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--baseline-searches", type=int, default=500, help="searches timed against the scan")
    return parser.parse_args(argv)


def search_vs_scan(packed: np.ndarray, kind: str, max_bits: int, count: int, seed: int) -> tuple[float, float]:
    """Median ms of one greedy step's search (all images within ``max_bits`` of one image): the index dedupe uses
    next to the baseline, issue 6's numpy linear scan of the same hashes. Their answers are checked equal."""
    nwords = (NBITS[kind] + 63) // 64
    keys = np.arange(len(packed), dtype=np.int64)
    index = NumpyTreeIndex(NBITS[kind])
    index.bulk_load_packed(keys, packed)
    scan = LinearScan(words_of_packed(packed, nwords))
    words = words_of_packed(packed, nwords)
    index_ms, scan_ms = [], []
    for row in np.random.default_rng(seed).integers(0, len(packed), count).tolist():
        started = time.perf_counter()
        _, found = index.search_arrays(packed[row], max_bits)
        index_ms.append(1e3 * (time.perf_counter() - started))
        started = time.perf_counter()
        _, expected = scan.search(words[row], max_bits)
        scan_ms.append(1e3 * (time.perf_counter() - started))
        if sorted(found.tolist()) != sorted(expected.tolist()):
            raise SystemExit(f"{kind}: index and scan disagree for image {row}")
    return float(np.median(index_ms)), float(np.median(scan_ms))


def table_of(packed: np.ndarray, kind: str, extra: np.ndarray | None) -> HashTable:
    n = len(packed)
    sources = [Source(f"img{i}.jpg", path=Path(f"img{i}.jpg")) for i in range(n)]
    table = HashTable.empty(kind, sources, ORIENTATIONS if extra is not None else 1)
    table.packed[:, 0] = packed
    if extra is not None:
        table.packed[:, 1:] = extra
    table.ok[:] = True
    table.width[:], table.height[:], table.nbytes[:] = 640, 480, 100_000
    return table


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    collection = hashgen.generate(args.corpus, args.images, 2 * args.images, args.seed, 1000, 200)
    print(f"generated {args.images} images' hashes in {time.perf_counter() - started:.1f} s")
    for spec in args.ranges.split(","):
        kind, value = spec.split(":")
        range_ = float(value)
        packed = collection.records.packed(kind)
        extra = None
        if args.dihedral:
            fresh = collection.queries.packed(kind)[collection.queries.source < 0]
            pick = np.random.default_rng(args.seed).integers(0, len(fresh), (args.images, ORIENTATIONS - 1))
            extra = fresh[pick]
        table = table_of(packed, kind, extra)
        started = time.perf_counter()
        groups = group_duplicates(table, max_bits_within(range_, kind), "largest")
        took = time.perf_counter() - started
        removed = sum(len(g.removed) for g in groups)
        print(
            f"{kind} range {range_:g}{' dihedral' if args.dihedral else ''}: {len(groups)} groups "
            f"({removed} duplicates) in {took:.1f} s ({1e3 * took / args.images:.2f} ms per image)",
            flush=True,
        )
        if args.baseline_searches:
            index_ms, scan_ms = search_vs_scan(
                packed, kind, max_bits_within(range_, kind), args.baseline_searches, args.seed
            )
            print(
                f"  one search, median of {args.baseline_searches}: index {index_ms:.3f} ms, numpy linear scan "
                f"(baseline) {scan_ms:.3f} ms: {scan_ms / index_ms:.1f}x",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
