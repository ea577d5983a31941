"""Near-duplicate search among uniformly random bmh1 hashes: NumpyTreeIndex against a numpy scan and FAISS (issue 18).

    .venv/bin/python benchmarks/bench_near.py --records 2000000 --json /tmp/near.json

Uniformly random 961-bit hashes are the case a metric tree cannot prune (every record is about half the bits from
every other), so this measures the block tables. Queries are stored hashes with ``--flips`` (3%) of their bits
flipped at random positions; each asks for the nearest record within ``--within`` (5%, 48 bits), which is the
record it was made from. Rows:

- **near-duplicate, k=1 within 5%**: ``NumpyTreeIndex.nearest_arrays(query, 1, 48)`` (the class the server uses for
  both hash types) against the numpy scan (``bench_index.LinearScan``: the tree's own XOR + popcount kernel over
  the same (n, 16) uint64 array, then the records within 48 bits), the textbook one-liner scan
  (``np.bitwise_count(words ^ q).sum(axis=1)``), FAISS ``IndexBinaryFlat`` (k=1, then the 48-bit limit) and FAISS
  ``IndexBinaryMultiHash`` (``--faiss-tables`` tables of ``--faiss-bits`` bits, ``nflip`` chosen so that the
  pigeonhole makes radius 48 exact: tables x (nflip + 1) > 48);
- **radius 48**: every record within 5% (the same engines' range searches);
- **k=10, unrelated**: fresh random queries (nothing near), the 10 nearest: the tables find nothing within their
  reach and the pivot tree takes over, so this row is about a scan's cost.

Every engine answers every query; the engines take turns query by query (so a burst of load on the shared machine
hits them alike) and each query's answers are checked against the scan's: recall is the share of near-duplicate
queries whose answer is the record they were made from, and every mismatch is counted. FAISS runs with one
OpenMP thread, like the numpy engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_index import LinearScan, NaiveScan, faiss_module, interleaved, machine_facts  # noqa: E402
from matchdb.index import NumpyTreeIndex  # noqa: E402
from matchdb.index.kernels import words_of_packed  # noqa: E402

NBITS = 961
NBYTES = 121
Answer = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]  # (bits, keys) sorted by (bits, key)
Query = Callable[[int], Answer]  # query number -> answer


def random_hashes(count: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """``count`` uniformly random bmh1 hashes, packed (the last byte holds bit 960 only)."""
    packed = rng.integers(0, 256, (count, NBYTES), dtype=np.uint8)
    packed[:, -1] &= 1
    return packed


def flip(packed: npt.NDArray[np.uint8], flips: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Copies of the rows with ``flips`` distinct random bits of each flipped."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    for row in bits:
        row[rng.choice(NBITS, flips, replace=False)] ^= 1
    return np.packbits(bits, axis=1, bitorder="little")


def sorted_answer(bits: npt.NDArray[Any], keys: npt.NDArray[Any], limit: int | None = None) -> Answer:
    bits, keys = np.asarray(bits, np.int64), np.asarray(keys, np.int64)
    keep = keys >= 0
    if limit is not None:
        keep &= bits <= limit
    bits, keys = bits[keep], keys[keep]
    order = np.lexsort((keys, bits))
    return bits[order], keys[order]


class Faiss:
    """FAISS's flat index and its multi-index hashing one, over the same packed hashes (968 bits: 7 zero bits)."""

    def __init__(self, packed: npt.NDArray[np.uint8], tables: int, bits: int, within: int) -> None:
        faiss = faiss_module()
        faiss.omp_set_num_threads(1)
        self.flat = faiss.IndexBinaryFlat(NBYTES * 8)
        started = time.perf_counter()
        self.flat.add(packed)
        self.flat_seconds = time.perf_counter() - started
        self.multi = faiss.IndexBinaryMultiHash(NBYTES * 8, tables, bits)
        self.multi.nflip = -(-(within + 1) // tables) - 1  # tables x (nflip + 1) > within: exact at ``within``
        started = time.perf_counter()
        self.multi.add(packed)
        self.multi_seconds = time.perf_counter() - started

    def flat_nearest(self, query: npt.NDArray[np.uint8], k: int, limit: int | None) -> Answer:
        dist, ids = self.flat.search(query[None, :], k)
        return sorted_answer(dist[0], ids[0], limit)

    def flat_range(self, query: npt.NDArray[np.uint8], radius: int) -> Answer:
        _, dist, ids = self.flat.range_search(query[None, :], radius + 1)  # FAISS keeps d < radius
        return sorted_answer(dist, ids)

    def multi_nearest(self, query: npt.NDArray[np.uint8], k: int, limit: int | None) -> Answer:
        dist, ids = self.multi.search(query[None, :], k)
        return sorted_answer(dist[0], ids[0], limit)

    def multi_range(self, query: npt.NDArray[np.uint8], radius: int) -> Answer:
        _, dist, ids = self.multi.range_search(query[None, :], radius + 1)
        return sorted_answer(dist, ids)


def summary(samples: list[float]) -> dict[str, float]:
    """Wall-clock percentiles in milliseconds."""
    ms = np.array(samples) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}


@dataclass
class Engines:
    """What answers the queries: the index, the scans and FAISS (None when skipped)."""

    index: NumpyTreeIndex
    scan: LinearScan
    naive: NaiveScan
    faiss: Faiss | None

    def calls(self, queries: npt.NDArray[np.uint8], k: int | None, radius: int | None) -> dict[str, Query]:
        """Per engine, query number -> answer: the k nearest (within ``radius`` if given), or with ``k`` None
        every record within ``radius``."""
        qwords = words_of_packed(queries, 16)
        qbytes = [q.tobytes() for q in queries]
        faiss = self.faiss
        calls: dict[str, Query] = {}
        if k is None:
            r = int(radius or 0)
            calls["NumpyTreeIndex"] = lambda i: self.index.search_arrays(qbytes[i], r)
            calls["numpy scan"] = lambda i: self.scan.search(qwords[i], r)
            if faiss is not None:
                calls["FAISS flat"] = lambda i: faiss.flat_range(queries[i], r)
                calls["FAISS MultiHash"] = lambda i: faiss.multi_range(queries[i], r)
            return calls
        kk = k
        calls["NumpyTreeIndex"] = lambda i: self.index.nearest_arrays(qbytes[i], kk, radius)
        calls["numpy scan"] = lambda i: (
            self.scan.nearest(qwords[i], kk) if radius is None else self.scan.search(qwords[i], radius)
        )
        if faiss is not None:
            calls["FAISS flat"] = lambda i: faiss.flat_nearest(queries[i], kk, radius)
            calls["FAISS MultiHash"] = lambda i: faiss.multi_nearest(queries[i], kk, radius)
        return calls

    def naive_call(self, queries: npt.NDArray[np.uint8], radius: int | None) -> Query:
        qwords = words_of_packed(queries, 16)
        if radius is None:
            return lambda i: self.naive.nearest(qwords[i], 10)
        return lambda i: self.naive.search(qwords[i], radius)


def measure(
    label: str,
    queries: npt.NDArray[np.uint8],
    k: int | None,
    radius: int | None,
    engines: Engines,
    sources: npt.NDArray[np.int64],
    naive_queries: int,
) -> list[dict[str, Any]]:
    """One row per engine for one kind of query: latency, mismatches against the scan, recall of the sources."""
    times, cpu, answers = interleaved(engines.calls(queries, k, radius), len(queries))
    naive_count = min(len(queries), naive_queries)
    naive_times, naive_cpu, _ = interleaved({"naive": engines.naive_call(queries, radius)}, naive_count)
    cpu["numpy one-liner scan"] = naive_cpu["naive"]
    truth = [(b[:k], keys[:k]) if k is not None else (b, keys) for b, keys in answers["numpy scan"]]
    rows: list[dict[str, Any]] = []
    for name, samples in [*times.items(), ("numpy one-liner scan", naive_times["naive"])]:
        entry: dict[str, Any] = {"query": label, "engine": name, **summary(samples)}
        entry["cpu_p50_ms"] = 1e3 * float(np.percentile(cpu[name], 50))
        if name in answers:
            got = answers[name]
            entry["mismatches"] = sum(
                not (np.array_equal(g[0], t[0]) and np.array_equal(g[1], t[1])) for g, t in zip(got, truth, strict=True)
            )
            if radius is not None and k is not None:
                found = [len(g[1]) > 0 and g[1][0] == s for g, s in zip(got, sources.tolist(), strict=True)]
                entry["recall"] = float(np.mean(found))
        else:
            entry["note"] = f"{naive_count} queries"
        rows.append(entry)
    base = next(r["p50_ms"] for r in rows if r["engine"] == "numpy scan")
    base_cpu = next(r["cpu_p50_ms"] for r in rows if r["engine"] == "numpy scan")
    print(f"\n{label}:")
    for entry in rows:
        entry["scan_over_engine_p50"] = base / entry["p50_ms"]
        entry["scan_over_engine_cpu_p50"] = base_cpu / entry["cpu_p50_ms"]
        extra = f"  recall {100 * entry['recall']:.1f}%" if "recall" in entry else ""
        extra += f"  mismatches {entry['mismatches']}" if "mismatches" in entry else f"  ({entry['note']})"
        print(
            f"  {entry['engine']:22s} p50 {entry['p50_ms']:9.3f} ms  p99 {entry['p99_ms']:9.3f} ms  "
            f"scan/engine {entry['scan_over_engine_p50']:7.1f}x  CPU p50 {entry['cpu_p50_ms']:9.3f} ms "
            f"({entry['scan_over_engine_cpu_p50']:7.1f}x){extra}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--flips", type=float, default=0.03, help="share of the bits flipped in a query")
    parser.add_argument("--within", type=float, default=0.05, help="near-duplicate threshold, share of the bits")
    parser.add_argument("--naive-queries", type=int, default=50, help="queries for the slow one-liner scan")
    parser.add_argument("--faiss-tables", type=int, default=17)
    parser.add_argument("--faiss-bits", type=int, default=0, help="bits per FAISS hash table (0: log2(n) - 3)")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    facts = machine_facts()
    for key, value in facts.items():
        print(f"{key}: {value}")
    rng = np.random.default_rng(args.seed)
    n = args.records
    flips, within = round(args.flips * NBITS), int(args.within * NBITS)
    packed = random_hashes(n, rng)
    sources = rng.integers(0, n, args.queries)
    near_queries = flip(packed[sources], flips, rng)
    far_queries = random_hashes(args.queries, rng)
    print(f"{n:,} uniformly random bmh1 hashes; queries: {flips} bits flipped, nearest within {within} bits")

    report: dict[str, Any] = {"machine": facts, "records": n, "flips": flips, "within": within, "rows": []}
    index = NumpyTreeIndex(NBITS)
    started = time.perf_counter()
    index.bulk_load_packed(np.arange(n), packed)
    report["build_seconds"] = time.perf_counter() - started
    report["index_bytes_per_record"] = index.nbytes / n
    print(f"NumpyTreeIndex: built in {report['build_seconds']:.1f} s, {index.nbytes / n:.1f} bytes/record")
    words = words_of_packed(packed, 16)
    scan, naive = LinearScan(words), NaiveScan(words)
    faiss = None
    if not args.no_faiss:
        bits = args.faiss_bits or max(8, n.bit_length() - 4)
        faiss = Faiss(packed, args.faiss_tables, bits, within)
        report["faiss"] = {
            "flat_add_seconds": faiss.flat_seconds,
            "multihash": {"tables": args.faiss_tables, "bits": bits, "nflip": faiss.multi.nflip},
            "multihash_add_seconds": faiss.multi_seconds,
        }
        print(
            f"FAISS: flat added in {faiss.flat_seconds:.1f} s, MultiHash ({args.faiss_tables} x {bits} bits, "
            f"nflip {faiss.multi.nflip}) in {faiss.multi_seconds:.1f} s"
        )

    for label, queries, k, radius in (
        ("near-duplicate, k=1 within 5%", near_queries, 1, within),
        ("radius 5%", near_queries, None, within),
        ("k=10, unrelated", far_queries, 10, None),
    ):
        rows = measure(label, queries, k, radius, Engines(index, scan, naive, faiss), sources, args.naive_queries)
        report["rows"].extend(rows)
    report["load_average_at_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
