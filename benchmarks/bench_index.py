"""Query latency of NumpyTreeIndex against pybktree, a numpy linear scan and FAISS IndexBinaryFlat (issue 6).

Run from the repository root (faiss-cpu is a benchmark-only dependency: ``.venv/bin/pip install faiss-cpu``):

    .venv/bin/python benchmarks/bench_index.py --corpus ../shared/corpus --json /tmp/bench_index.json

Hashes come from ``benchmarks/hashgen.py`` (its docstring says exactly how; seeded): unrelated ones modelled on a
few thousand hashes of real photo variants, plus near-duplicate groups with measured copy flips; queries are half
fresh copies of stored records, half unrelated. Every engine answers the same queries, one at a time, with one
thread: the numpy scan and the tree run in this thread (numpy does not thread these operations) and FAISS gets
``omp_set_num_threads(1)``. Each engine returns the same thing, hits sorted by (bits, key) as numpy arrays (FAISS
returns its own arrays; it is not asked to sort), and the tree's answers are checked against the scan's (and
FAISS's distances on the first 50 queries). The numpy scan uses the tree's own distance kernel, so the ratios
measure pruning, not a better popcount; the "numpy naive scan" rows (``--naive-queries``, default 100) are the
textbook ``np.bitwise_count(words ^ q).sum(axis=1)`` for reference. The
"2 threads" rows run the same queries from two Python threads at once (FAISS single-threaded inside each call),
so they show how well each engine uses the machine's two cores; the FAISS "omp 2" row gives FAISS two OpenMP
threads for each call instead.

pybktree is built on all records (``--pybktree-records`` caps that, for quick runs) but asked at most
``--pybktree-queries`` queries per configuration (default 100, as the issue says): a query takes up to seconds.
Its k = 10 rows grow the radius until k answers are inside it, as ``BKTreeIndex.nearest`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import hashgen  # noqa: E402
from matchdb.index.kernels import Distance  # noqa: E402
from matchdb.index.numpy_tree import NumpyTreeIndex  # noqa: E402

Answer = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]  # (bits, keys)
Query = Callable[[int], Answer]  # query number -> answer
T = TypeVar("T")

#: (label, radius in bits or None, k or None) per kind. 6.25% of 961 bits is 60.
CONFIGS: dict[str, list[tuple[str, int | None, int | None]]] = {
    "phash": [("r=4 (6.25%)", 4, None), ("r=8 (12.5%)", 8, None), ("r=12 (18.75%)", 12, None), ("k=10", None, 10)],
    "bmh1": [
        ("r=48 (5%)", 48, None),
        ("r=60 (6.25%)", 60, None),
        ("r=96 (10%)", 96, None),
        ("k=10", None, 10),
    ],
}


@dataclass
class Row:
    kind: str
    config: str
    engine: str
    threads: int
    queries: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    queries_per_s: float
    hits_per_query: float
    note: str = ""


@dataclass
class Build:
    kind: str
    engine: str
    records: int
    seconds: float
    bytes_per_record: float
    note: str = ""


@dataclass
class Report:
    machine: dict[str, Any]
    data: dict[str, Any]
    builds: list[Build] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)


# ----- engines -----------------------------------------------------------------------------------------------------


class LinearScan:
    """XOR + ``np.bitwise_count`` over one contiguous (n, nwords) uint64 array, in cache-sized chunks (the same
    distance kernel the tree uses, so the comparison is about pruning, not about the kernel)."""

    def __init__(self, words: npt.NDArray[np.uint64]) -> None:
        self.words = words

    def distances(self, query: npt.NDArray[np.uint64]) -> npt.NDArray[Any]:
        return Distance(query)(self.words)

    def search(self, query: npt.NDArray[np.uint64], radius: int) -> Answer:
        bits = self.distances(query)
        keys = np.flatnonzero(bits <= radius)
        near = bits[keys].astype(np.int64)
        order = np.lexsort((keys, near))
        return near[order], keys[order]

    def nearest(self, query: npt.NDArray[np.uint64], k: int) -> Answer:
        """The k-th distance from a histogram of all distances (linear; several times faster than a partition)."""
        bits = self.distances(query)
        kth = int(np.searchsorted(np.cumsum(np.bincount(bits)), min(k, len(bits)), side="left"))
        keys = np.flatnonzero(bits <= kth)
        near = bits[keys].astype(np.int64)
        order = np.lexsort((keys, near))[:k]
        return near[order], keys[order]


class NaiveScan(LinearScan):
    """The textbook one-liner, ``np.bitwise_count(words ^ q).sum(axis=1)``, for reference."""

    def distances(self, query: npt.NDArray[np.uint64]) -> npt.NDArray[Any]:
        counts = np.bitwise_count(self.words ^ query)
        out: npt.NDArray[Any] = counts[:, 0] if counts.shape[1] == 1 else counts.sum(axis=1)
        return out


def faiss_module() -> Any:
    """FAISS, imported by name: it is a benchmark-only dependency, so type checks must not need it installed."""
    return importlib.import_module("faiss")


# ----- timing ------------------------------------------------------------------------------------------------------


def time_queries(query: Query, count: int, threads: int = 1) -> tuple[list[float], float, list[int]]:
    """Per-query latencies (seconds), wall time of the whole run and hit counts, with ``threads`` workers."""
    latencies = [0.0] * count
    hits = [0] * count

    def work(worker: int) -> None:
        for i in range(worker, count, threads):
            start = time.perf_counter()
            bits, _ = query(i)
            latencies[i] = time.perf_counter() - start
            hits[i] = len(bits)

    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        if threads == 1:
            work(0)
        else:
            workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        wall = time.perf_counter() - start
    finally:
        gc.enable()
    return latencies, wall, hits


def interleaved(
    calls: dict[str, Callable[[int], T]], count: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[T]]]:
    """Every engine answers query 0, then query 1, ... (the order rotating), timed one call at a time: a burst of
    load on a shared machine then hits every engine alike, and the ratios of one run stay fair. Returns each
    engine's wall times, its CPU times (this thread's: what the call itself cost, without the waits a busy machine
    adds) and its answers."""
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    answers: dict[str, list[T]] = {name: [] for name in calls}
    names = list(calls)
    gc.collect()
    gc.disable()
    try:
        for i in range(count):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                started, started_cpu = time.perf_counter(), time.thread_time()
                answer = calls[name](i)
                cpu[name].append(time.thread_time() - started_cpu)
                wall[name].append(time.perf_counter() - started)
                answers[name].append(answer)
    finally:
        gc.enable()
    return wall, cpu, answers


def row(
    kind: str, config: str, engine: str, threads: int, timed: tuple[list[float], float, list[int]], note: str = ""
) -> Row:
    latencies, wall, hits = timed
    ms = np.array(latencies) * 1e3
    return Row(
        kind=kind,
        config=config,
        engine=engine,
        threads=threads,
        queries=len(latencies),
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=float(ms.mean()),
        queries_per_s=len(latencies) / wall,
        hits_per_query=float(np.mean(hits)),
        note=note,
    )


def retained_bytes(build: Callable[[], object]) -> tuple[object, float, int]:
    """Build under tracemalloc: the object, seconds, and bytes still allocated after the build."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    built = build()
    seconds = time.perf_counter() - start
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return built, seconds, after - before


# ----- the run -----------------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        facts["faiss"] = faiss_module().__version__
    except ImportError:
        facts["faiss"] = None
    try:
        import pybktree  # noqa: F401

        facts["pybktree"] = "1.1"
    except ImportError:
        facts["pybktree"] = None
    with contextlib.suppress(ValueError, OSError):
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return facts


@dataclass
class Engines:
    """Everything that answers queries for one hash type, and the queries in each engine's own form."""

    nbits: int
    index: NumpyTreeIndex
    linear: LinearScan
    naive: NaiveScan
    faiss_index: Any
    faiss_queries: list[npt.NDArray[np.uint8]]
    tree: Any  # pybktree.BKTree or None
    query_bytes: list[bytes]
    qwords: npt.NDArray[np.uint64]
    query_ints: list[int]

    def queries(self, radius: int | None, k: int | None) -> tuple[Query, Query, Query, Query, Query]:
        """(tree, linear, naive, FAISS, pybktree) query functions for one configuration."""
        if radius is not None:
            r = radius
            return (
                lambda i: self.index.search_arrays(self.query_bytes[i], r),
                lambda i: self.linear.search(self.qwords[i], r),
                lambda i: self.naive.search(self.qwords[i], r),
                lambda i: self._faiss_range(i, r),
                lambda i: self._bktree_range(i, r),
            )
        kk = k if k is not None else 10
        return (
            lambda i: self.index.nearest_arrays(self.query_bytes[i], kk),
            lambda i: self.linear.nearest(self.qwords[i], kk),
            lambda i: self.naive.nearest(self.qwords[i], kk),
            lambda i: self._faiss_nearest(i, kk),
            lambda i: self._bktree_nearest(i, kk),
        )

    def _faiss_range(self, i: int, radius: int) -> Answer:
        _, dist, ids = self.faiss_index.range_search(self.faiss_queries[i], radius + 1)  # FAISS keeps d < radius
        return dist.astype(np.int64), ids

    def _faiss_nearest(self, i: int, k: int) -> Answer:
        dist, ids = self.faiss_index.search(self.faiss_queries[i], k)
        return dist[0].astype(np.int64), ids[0]

    def _bktree_range(self, i: int, radius: int) -> Answer:
        found = self.tree.find(self.query_ints[i], radius)
        return np.array([d for d, _ in found], np.int64), np.empty(0, np.int64)

    def _bktree_nearest(self, i: int, k: int) -> Answer:
        """pybktree has no k-NN: grow the radius until k answers are inside it (what BKTreeIndex does)."""
        radius = 4
        while True:
            found = self.tree.find(self.query_ints[i], radius)
            if len(found) >= k or radius >= self.nbits:
                return np.array([d for d, _ in found[:k]], np.int64), np.empty(0, np.int64)
            radius = min(self.nbits, radius * 2)


def bench_kind(kind: str, collection: hashgen.Collection, args: argparse.Namespace, report: Report, faiss: Any) -> None:
    nbits = hashgen.NBITS[kind]
    packed = collection.records.packed(kind)
    n = len(packed)
    keys = np.arange(n, dtype=np.int64)
    query_packed = collection.queries.packed(kind)
    query_count = len(query_packed)
    nwords = (nbits + 63) // 64
    padded = np.zeros((n, nwords * 8), np.uint8)
    padded[:, : packed.shape[1]] = packed
    words = padded.view("<u8").astype(np.uint64).reshape(n, nwords)
    del padded
    query_words = np.zeros((query_count, nwords * 8), np.uint8)
    query_words[:, : packed.shape[1]] = query_packed
    qwords = query_words.view("<u8").astype(np.uint64).reshape(query_count, nwords)
    query_bytes = [q.tobytes() for q in query_packed]

    print(f"\n== {kind}: {n:,} records of {nbits} bits, {query_count} queries ==", flush=True)
    linear = LinearScan(words)
    naive = NaiveScan(words)
    report.builds.append(Build(kind, "numpy linear scan", n, 0.0, words.nbytes / n + 8, "words + int64 keys"))

    index = NumpyTreeIndex(nbits)
    _, seconds, retained = retained_bytes(lambda: index.bulk_load_packed(keys, packed))
    report.builds.append(
        Build(kind, "NumpyTreeIndex", n, seconds, retained / n, f"arrays {index.nbytes / n:.1f} B/record")
    )
    print(f"NumpyTreeIndex build {seconds:.2f} s, {retained / n:.1f} bytes/record (tracemalloc)", flush=True)

    faiss_index: Any = None
    if faiss is not None:
        faiss_packed = np.ascontiguousarray(packed)  # 121 bytes = 968 bits for bmh1: the 7 spare bits are zero
        start = time.perf_counter()
        faiss_index = faiss.IndexBinaryFlat(faiss_packed.shape[1] * 8)
        faiss_index.add(faiss_packed)
        report.builds.append(
            Build(kind, "FAISS IndexBinaryFlat", n, time.perf_counter() - start, float(faiss_packed.shape[1]) + 8)
        )
        faiss_queries = [np.ascontiguousarray(q[None, :]) for q in query_packed]
    else:
        faiss_queries = []

    tree_records = min(n, args.pybktree_records)
    tree: Any = None
    if tree_records:
        import pybktree

        def hamming(a: int, b: int) -> int:
            return (a ^ b).bit_count()

        values = [int.from_bytes(p.tobytes(), "little") for p in packed[:tree_records]]
        built_tree, seconds, retained = retained_bytes(lambda: pybktree.BKTree(hamming, values))
        tree = built_tree
        note = f"first {tree_records:,} records" if tree_records < n else ""
        report.builds.append(Build(kind, "pybktree", tree_records, seconds, retained / tree_records, note))
        print(f"pybktree build ({tree_records:,} records) {seconds:.1f} s", flush=True)
        del values
    query_ints = [int.from_bytes(q, "little") for q in query_bytes]

    engines = Engines(nbits, index, linear, naive, faiss_index, faiss_queries, tree, query_bytes, qwords, query_ints)
    for label, radius, k in CONFIGS[kind]:
        print(f"-- {kind} {label}", flush=True)
        rows: list[Row] = []
        q_tree, q_linear, q_naive, q_faiss, q_bktree = engines.queries(radius, k)
        # exactness: the tree must give exactly the scan's answer (and FAISS the same distances)
        mismatches = 0
        for i in range(query_count):
            tb, tk = q_tree(i)
            lb, lk = q_linear(i)
            if not (np.array_equal(tb, lb) and np.array_equal(tk, lk)):
                mismatches += 1
            if faiss_index is not None and i < 50:
                fb, _ = q_faiss(i)
                if not np.array_equal(np.sort(fb), lb):
                    print(f"   FAISS differs from the scan on query {i}", flush=True)
        if mismatches:
            print(f"   !! NumpyTreeIndex differs from the linear scan on {mismatches} queries", flush=True)

        rows.append(row(kind, label, "NumpyTreeIndex", 1, time_queries(q_tree, query_count)))
        rows.append(row(kind, label, "numpy linear scan", 1, time_queries(q_linear, query_count)))
        naive_count = min(query_count, args.naive_queries)
        rows.append(
            row(kind, label, "numpy naive scan", 1, time_queries(q_naive, naive_count), f"{naive_count} queries")
        )
        if faiss_index is not None:
            faiss.omp_set_num_threads(1)
            rows.append(row(kind, label, "FAISS IndexBinaryFlat", 1, time_queries(q_faiss, query_count)))
        if tree is not None:
            count = min(query_count, args.pybktree_queries)
            note = f"{count} queries" + (f" on the first {tree_records:,} records" if tree_records < n else "")
            rows.append(row(kind, label, "pybktree", 1, time_queries(q_bktree, count), note))
        rows.append(row(kind, label, "NumpyTreeIndex", 2, time_queries(q_tree, query_count, 2), "2 Python threads"))
        rows.append(
            row(kind, label, "numpy linear scan", 2, time_queries(q_linear, query_count, 2), "2 Python threads")
        )
        if faiss_index is not None:
            faiss.omp_set_num_threads(1)
            rows.append(
                row(kind, label, "FAISS IndexBinaryFlat", 2, time_queries(q_faiss, query_count, 2), "2 Python threads")
            )
            faiss.omp_set_num_threads(2)
            rows.append(row(kind, label, "FAISS IndexBinaryFlat", 2, time_queries(q_faiss, query_count), "omp 2"))
            faiss.omp_set_num_threads(1)
        for r_ in rows:
            print(
                f"   {r_.engine:22s} {r_.threads}t  p50 {r_.p50_ms:8.3f} ms  p99 {r_.p99_ms:8.3f} ms  "
                f"{r_.queries_per_s:8.0f} q/s  hits {r_.hits_per_query:8.1f}  {r_.note}",
                flush=True,
            )
        report.rows.extend(rows)
        report.data.setdefault("mismatches", {})[f"{kind} {label}"] = mismatches


def goals(report: Report) -> list[dict[str, Any]]:
    """The issue's goals, as ratios of p50 latencies from this run."""
    out: list[dict[str, Any]] = []

    def p50(kind: str, config: str, engine: str, threads: int = 1) -> float | None:
        for r in report.rows:
            if (r.kind, r.config, r.engine, r.threads) == (kind, config, engine, threads) and not r.note.startswith(
                "omp"
            ):
                return r.p50_ms
        return None

    for kind, configs in CONFIGS.items():
        for label, radius, _ in configs:
            tree = p50(kind, label, "NumpyTreeIndex")
            linear = p50(kind, label, "numpy linear scan")
            faiss = p50(kind, label, "FAISS IndexBinaryFlat")
            if tree is None or linear is None:
                continue
            small = radius is not None and radius <= 0.0625 * hashgen.NBITS[kind]
            entry: dict[str, Any] = {
                "kind": kind,
                "config": label,
                "speedup_vs_linear": linear / tree,
                "speedup_vs_faiss": (faiss / tree) if faiss else None,
                "goal": ">= 3x linear and >= 1x FAISS" if small else ">= 1x linear",
            }
            met = linear / tree >= (3.0 if small else 1.0)
            if small and faiss:
                met = met and faiss / tree >= 1.0
            entry["met"] = met
            out.append(entry)
    return out


def print_tables(report: Report) -> None:
    print("\n== build and memory ==")
    print(f"{'kind':6s} {'engine':24s} {'records':>10s} {'build s':>8s} {'B/record':>9s}  note")
    for b in report.builds:
        print(f"{b.kind:6s} {b.engine:24s} {b.records:>10,} {b.seconds:>8.2f} {b.bytes_per_record:>9.1f}  {b.note}")
    print("\n== query latency (ms per query) ==")
    print(
        f"{'kind':6s} {'config':14s} {'engine':22s} {'thr':>3s} {'p50':>9s} {'p99':>9s} {'q/s':>8s} {'hits':>8s}  note"
    )
    for r in report.rows:
        print(
            f"{r.kind:6s} {r.config:14s} {r.engine:22s} {r.threads:>3d} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} "
            f"{r.queries_per_s:>8.0f} {r.hits_per_query:>8.1f}  {r.note}"
        )
    print("\n== goals (p50 ratios, single thread) ==")
    for g in report.goals:
        faiss = f"{g['speedup_vs_faiss']:.2f}x" if g["speedup_vs_faiss"] is not None else "n/a"
        print(
            f"{g['kind']:6s} {g['config']:14s} vs linear {g['speedup_vs_linear']:6.2f}x  vs FAISS {faiss:>7s}  "
            f"goal {g['goal']:30s} {'MET' if g['met'] else 'NOT MET'}"
        )
    both = sum(b.bytes_per_record for b in report.builds if b.engine == "NumpyTreeIndex")
    print(f"\nNumpyTreeIndex memory, both hash types together: {both:.1f} bytes/record (goal <= ~300)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--real", type=int, default=3000, help="real photo variants to hash")
    parser.add_argument("--pybktree-records", type=int, default=1_000_000)
    parser.add_argument("--pybktree-queries", type=int, default=100)
    parser.add_argument("--naive-queries", type=int, default=100)
    parser.add_argument("--kinds", default="phash,bmh1")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    try:
        faiss: Any = faiss_module()
        faiss.omp_set_num_threads(1)
    except ImportError:
        faiss = None
        print("faiss is not installed (.venv/bin/pip install faiss-cpu): its rows are skipped")

    facts = machine_facts()
    print("== machine ==")
    for key, value in facts.items():
        print(f"{key}: {value}")

    start = time.perf_counter()
    collection = hashgen.generate(args.corpus, args.records, args.queries, args.seed, args.real)
    generated = time.perf_counter() - start
    rng = np.random.default_rng(args.seed + 1)
    sizes = np.bincount(collection.group)
    data: dict[str, Any] = {
        "records": args.records,
        "queries": args.queries,
        "seed": args.seed,
        "real_variants": args.real,
        "generate_seconds": generated,
        "groups": len(sizes),
        "records_in_groups_of_2_or_more": float(np.mean(sizes[collection.group] >= 2)),
        "largest_group": int(sizes.max()),
        "copy_flips_median": {k: float(statistics.median(v.tolist())) for k, v in collection.copy_flips.items()},
        "copy_flips_p90": {k: float(np.percentile(v, 90)) for k, v in collection.copy_flips.items()},
        "profile": {},
    }
    print(f"\n== data (generated in {generated:.0f} s, seed {args.seed}) ==")
    print(
        f"{args.records:,} records in {data['groups']:,} groups; {100 * data['records_in_groups_of_2_or_more']:.1f}% "
        f"in groups of 2 or more; largest group {data['largest_group']}"
    )
    print(
        f"copy flips measured on re-encodes/resizes: median {data['copy_flips_median']}, p90 {data['copy_flips_p90']}"
    )
    for kind in hashgen.KINDS:
        real = hashgen.distance_profile(collection.real.packed(kind), kind, 20_000, rng)
        derived = hashgen.distance_profile(collection.records.packed(kind), kind, 20_000, rng)
        data["profile"][kind] = {"real": real, "records": derived}
        print(f"{kind} distances of random pairs, real variants: {_fmt(real)}")
        print(f"{kind} distances of random pairs, records:       {_fmt(derived)}")

    report = Report(machine=facts, data=data)
    for kind in args.kinds.split(","):
        bench_kind(kind, collection, args, report, faiss)
    report.goals = goals(report)
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=float))
        print(f"\nwrote {args.json}")
    return 0


def _fmt(profile: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in profile.items())


if __name__ == "__main__":
    raise SystemExit(main())
