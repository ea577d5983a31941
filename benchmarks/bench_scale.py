"""One collection of 1 to 10 million records on Postgres: load, memory, and query latency in-process and over HTTP.

    MATCHDB_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_scale.py --records 10000000 --json /tmp/scale-10m.json

Records carry realistic hashes of both types from ``benchmarks/hashgen.py`` (near-duplicate groups plus unrelated
images; hashing ten million images would take days, hashing is measured by ``bench_hashing.py``). In a scratch
database on the server (dropped at the end) it measures, in one run:

1. **writes**: the first ``--write-sample`` records stored through ``matchdb.storage.records.upsert_records``, the
   function every API insert and ``matchdb ingest`` batch goes through (rows + change-log entries, one
   transaction per batch of ``--batch``), rows/s; the rest bulk-loaded with ``COPY ... FROM STDIN`` (how a
   collection this size is migrated in), rows/s; the database's size per record;
2. **load**: ``IndexRegistry.get`` from cold (binary COPY of every hash, then both hash types' indexes built), the
   seconds and the memory kept (tracemalloc, and the process's RSS growth), bytes per record;
3. **idle catch-up**: the change-log check every collection query makes first, when nothing changed;
4. **queries**, each a stored record asking for its neighbours, excluding itself (what ``visualKNN`` does with
   ``{"_id": ...}``): (a) phash within 4 bits (radius 6.25%, k=100) from random records; (b) bmh1 near duplicate:
   the nearest within 5% (k=1) from records that have one (a member of a near-duplicate group); (c) bmh1 k=10
   from records that have none (singletons: their neighbours are unrelated images). Engines: the index alone
   (``NumpyTreeIndex.nearest``, in-process), ``CollectionService.knn`` (everything the endpoint does after parsing:
   catch-up, index, fetch of the answer's records), a numpy linear scan of the same packed hashes
   (``bench_index.LinearScan``), FAISS ``IndexBinaryFlat`` and a FAISS index that prunes (``--faiss-pruning``:
   ``IndexBinaryMultiHash``, with enough bit flips per table for exact answers within the near-duplicate radius,
   or ``IndexBinaryIVF``). The engines take turns query by query. Each query's answer from the index is checked
   against the scan's; FAISS's are compared too (recall of the pruning one);
5. **near-duplicate recall**: ``--recall-queries`` fresh copies of stored records (hashgen's measured copy flips)
   asking for the nearest bmh1 record within 5%, against a brute-force scan (FAISS flat, batched);
6. **HTTP**: the in-process indexes are dropped, ``matchdb serve`` (one worker) is started on the database; its load
   time (until ``/v2/ping`` reports the collection ready) and its resident memory are read, and the same queries
   as in 4 are sent as ``POST /v2/visualKNN`` with ``{"query_record": {"_id": ...}}`` over one keep-alive
   connection.

It prints the machine facts and the tables; ``--json`` keeps everything.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import hashgen  # noqa: E402
from benchmarks.bench_index import LinearScan, faiss_module, interleaved, machine_facts  # noqa: E402
from matchdb.config import Settings  # noqa: E402
from matchdb.hashing import NBITS, VisualHash  # noqa: E402
from matchdb.index.kernels import words_of_packed  # noqa: E402
from matchdb.service.collections import CollectionService, max_bits_within  # noqa: E402
from matchdb.service.indexes import IndexRegistry  # noqa: E402
from matchdb.service.records import fetcher_from_settings, loader_from_settings  # noqa: E402
from matchdb.storage.collections import create_collection  # noqa: E402
from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from matchdb.storage.hash_load import load_hashes  # noqa: E402
from matchdb.storage.records import HASH_VERSION, NewRecord, upsert_records  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402

Answer = tuple[list[int], list[int]]  # (bits, row ids), sorted by (bits, row id)


@dataclass(frozen=True)
class QuerySet:
    """One kind of query: stored records (positions) asking for their k nearest (within ``radius`` %)."""

    label: str
    kind: str
    k: int
    radius: float | None
    positions: npt.NDArray[np.int64]

    @property
    def max_bits(self) -> int | None:
        return None if self.radius is None else max_bits_within(self.radius, self.kind)


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now (Linux /proc), not the peak."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def new_record(i: int, stored: hashgen.HashSet) -> NewRecord:
    return NewRecord(
        f"r{i}", {"shard": i % 16}, None, 640, 480, f"{i:064x}", stored.bmh1[i].tobytes(), stored.phash[i].tobytes()
    )


def write(engine: Any, collection_id: str, stored: hashgen.HashSet, count: int, batch: int) -> float:
    """Store the first ``count`` records through the API's own write path; returns rows/s."""
    started = time.perf_counter()
    for start in range(0, count, batch):
        rows = [new_record(i, stored) for i in range(start, min(count, start + batch))]
        with engine.begin() as connection:
            upsert_records(connection, collection_id, rows)
    return count / max(time.perf_counter() - started, 1e-9)


def copy_rows(collection_id: str, stored: hashgen.HashSet, start: int) -> Iterator[bytes]:
    """The records from ``start`` on as COPY text rows (the same values ``new_record`` gives), in chunks."""
    now = "2026-01-01 00:00:00+00"
    for first in range(start, len(stored), 10_000):
        last = min(len(stored), first + 10_000)
        bmh1 = stored.bmh1[first:last]
        phash = stored.phash[first:last]
        lines = [
            f'{collection_id}\tr{i}\t{{"shard": {i % 16}}}\t\\N\t640\t480\t{i:064x}\t'
            f"\\\\x{bmh1[i - first].tobytes().hex()}\t\\\\x{phash[i - first].tobytes().hex()}\t{HASH_VERSION}\t{now}\n"
            for i in range(first, last)
        ]
        yield "".join(lines).encode()


def bulk_copy(engine: Any, collection_id: str, stored: hashgen.HashSet, start: int) -> float:
    """COPY the records from ``start`` on into ``records``; returns rows/s."""
    started = time.perf_counter()
    columns = "collection_id, ext_id, attributes, source_url, width, height, checksum, bmh1, phash, hash_version"
    with engine.begin() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY records ({columns}, updated_at) FROM STDIN") as copy:
            for chunk in copy_rows(collection_id, stored, start):
                copy.write(chunk)
    return (len(stored) - start) / max(time.perf_counter() - started, 1e-9)


# ----- engines --------------------------------------------------------------------------------------------------


class Engines:
    """Everything that answers one query set, as functions of the query number (position in the set)."""

    def __init__(self, queries: QuerySet, stored: hashgen.HashSet, row_ids: npt.NDArray[np.int64], loaded: Any) -> None:
        self.queries = queries
        packed = stored.packed(queries.kind)
        self.packed = packed
        self.row_ids = row_ids
        self.index = loaded.by_kind[queries.kind]
        self.values = [int.from_bytes(packed[p].tobytes(), "little") for p in queries.positions]

    def exclude(self, i: int) -> int:
        return int(self.row_ids[self.queries.positions[i]])

    def index_call(self, i: int) -> Answer:
        own = self.exclude(i)
        hits = self.index.nearest(self.values[i], self.queries.k, self.queries.max_bits, lambda key: key != own)
        return [h.bits for h in hits], [h.key for h in hits]

    def scan_call(self, scan: LinearScan, words: npt.NDArray[np.uint64]) -> Callable[[int], Answer]:
        def call(i: int) -> Answer:
            query = words[self.queries.positions[i]]
            if self.queries.max_bits is None:
                bits, pos = scan.nearest(query, self.queries.k + 1)
            else:
                bits, pos = scan.search(query, self.queries.max_bits)
            return self._own_answer(i, bits, pos)

        return call

    def faiss_call(self, index: Any) -> Callable[[int], Answer]:
        def call(i: int) -> Answer:
            query = self.packed[self.queries.positions[i]][None, :]
            if self.queries.max_bits is not None and self.queries.k > 50:
                _, bits, pos = index.range_search(query, self.queries.max_bits + 1)
            else:
                dist, ids = index.search(query, self.queries.k + 1)
                bits, pos = dist[0], ids[0]
            keep = pos >= 0
            return self._own_answer(i, bits[keep].astype(np.int64), pos[keep].astype(np.int64))

        return call

    def _own_answer(self, i: int, bits: npt.NDArray[np.int64], pos: npt.NDArray[np.int64]) -> Answer:
        """Drop the query's own record, apply the radius, sort by (bits, row id), keep k."""
        keys = self.row_ids[pos]
        keep = keys != self.exclude(i)
        if self.queries.max_bits is not None:
            keep &= bits <= self.queries.max_bits
        bits, keys = bits[keep], keys[keep]
        order = np.lexsort((keys, bits))[: self.queries.k]
        return [int(b) for b in bits[order]], [int(k) for k in keys[order]]


def service_call(service: CollectionService, collection_id: str, engines: Engines) -> Callable[[int], Answer]:
    queries = engines.queries
    loop = asyncio.new_event_loop()

    def call(i: int) -> Answer:
        query = VisualHash(queries.kind, engines.packed[queries.positions[i]].tobytes())
        answer = loop.run_until_complete(
            service.knn(collection_id, [query], queries.k, queries.radius, None, None, exclude=engines.exclude(i))
        )
        return list(answer.hamming), []

    return call


def measure_queries(
    sets: list[QuerySet],
    collection: hashgen.Collection,
    row_ids: npt.NDArray[np.int64],
    loaded: Any,
    service: CollectionService,
    collection_id: str,
    faiss_indexes: dict[str, dict[str, Any]],
    expected: dict[str, list[list[str]]],
) -> list[dict[str, Any]]:
    """In-process rows: every engine on every query set, answers checked against the scan's; ``expected`` gets
    each query's answer as ``_id`` values (for the HTTP rows)."""
    rows: list[dict[str, Any]] = []
    for queries in sets:
        nwords = (NBITS[queries.kind] + 63) // 64
        words = words_of_packed(collection.records.packed(queries.kind), nwords)
        engines = Engines(queries, collection.records, row_ids, loaded)
        calls: dict[str, Callable[[int], Answer]] = {
            "index (in-process)": engines.index_call,
            "CollectionService.knn (in-process)": service_call(service, collection_id, engines),
            "numpy scan": engines.scan_call(LinearScan(words), words),
        }
        for name, index in faiss_indexes.get(queries.kind, {}).items():
            calls[name] = engines.faiss_call(index)
        times, cpu, answers = interleaved(calls, len(queries.positions))
        del words
        truth = answers["numpy scan"]
        expected[queries.label] = [[f"r{p}" for p in np.searchsorted(row_ids, t[1]).tolist()] for t in truth]
        for name, samples in times.items():
            row: dict[str, Any] = {"query": queries.label, "engine": name, **percentiles(samples)}
            if not name.startswith("CollectionService"):  # (it runs in a worker thread: not this thread's CPU)
                row["cpu_p50_ms"] = 1000 * statistics.median(cpu[name])
            got = answers[name]
            if name.startswith("CollectionService"):
                row["mismatches"] = sum(g[0] != t[0] for g, t in zip(got, truth, strict=True))
            else:
                row["mismatches"] = sum(g != t for g, t in zip(got, truth, strict=True))
            if name.startswith("FAISS"):  # share of the exact answers' records it returned
                found = sum(len(set(g[1]) & set(t[1])) for g, t in zip(got, truth, strict=True))
                row["recall"] = found / max(1, sum(len(t[1]) for t in truth))
            row["answers_median"] = statistics.median(len(t[1]) for t in truth)
            rows.append(row)
            print_row(row)
        if any(r["mismatches"] for r in rows if r["query"] == queries.label and not r["engine"].startswith("FAISS")):
            raise SystemExit(f"{queries.label}: the index disagrees with the scan")
    return rows


def print_row(row: dict[str, Any]) -> None:
    extra = f"  recall {100 * row['recall']:.1f}%" if "recall" in row else ""
    mismatches = f"  mismatches {row['mismatches']}" if "mismatches" in row else ""
    print(
        f"  {row['query']:28s} {row['engine']:36s} p50 {row['p50_ms']:9.3f} ms  p99 {row['p99_ms']:9.3f} ms"
        f"  CPU p50 {row.get('cpu_p50_ms', float('nan')):8.3f} ms{mismatches}{extra}",
        flush=True,
    )


# ----- near-duplicate recall -------------------------------------------------------------------------------------


def near_duplicate_recall(
    collection: hashgen.Collection, row_ids: npt.NDArray[np.int64], loaded: Any, count: int, seed: int
) -> dict[str, Any]:
    """Fresh copies of stored records (measured copy flips): the index's nearest bmh1 record within 5% against a
    brute-force scan (FAISS flat, exact, batched). A query counts as recalled when the index answers the scan's
    nearest distance with the smallest row id at that distance."""
    rng = np.random.default_rng(seed)
    stored = collection.records.bmh1
    sources = rng.integers(0, len(stored), count)
    flips = rng.choice(collection.copy_flips["bmh1"], count)
    queries = hashgen.flip_bits(stored[sources], "bmh1", flips, rng)
    limit = max_bits_within(5.0, "bmh1")
    faiss = faiss_module()
    flat = faiss.IndexBinaryFlat(stored.shape[1] * 8)
    flat.add(stored)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    dist, ids = flat.search(queries, 16)
    brute_seconds = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    del flat
    index = loaded.by_kind["bmh1"]
    recalled, latencies, ties_cut = 0, [], 0
    for i in range(count):
        value = int.from_bytes(queries[i].tobytes(), "little")
        started = time.perf_counter()
        hits = index.nearest(value, 1, limit)
        latencies.append(time.perf_counter() - started)
        best = int(dist[i][0])
        at_best = row_ids[ids[i][dist[i] == best]]
        ties_cut += int((dist[i] == best).all())  # more ties than the 16 asked: the smallest id may be missing
        expected = (best, int(at_best.min())) if best <= limit else None
        got = (hits[0].bits, hits[0].key) if hits else None
        recalled += got == expected
    return {
        "queries": count,
        "recalled": recalled,
        "recall": recalled / count,
        "brute_force_seconds": brute_seconds,
        "ties_beyond_16": ties_cut,
        "index": percentiles(latencies),
    }


# ----- HTTP ------------------------------------------------------------------------------------------------------


def measure_http(
    url: str, collection_id: str, sets: list[QuerySet], expected: dict[str, list[list[str]]]
) -> list[dict[str, Any]]:
    """The same queries as ``POST /v2/visualKNN`` by ``_id`` over one keep-alive connection."""
    rows = []
    with httpx.Client(base_url=url, headers={"collection-id": collection_id}, timeout=60) as client:
        for queries in sets:
            times, mismatches = [], 0
            for i, position in enumerate(queries.positions.tolist()):
                body: dict[str, Any] = {"query_record": {"_id": f"r{position}"}, "k": queries.k}
                body["hash_type"] = queries.kind
                if queries.radius is not None:
                    body["radius"] = queries.radius
                started = time.perf_counter()
                response = client.post("/v2/visualKNN", json=body)
                times.append(time.perf_counter() - started)
                payload = response.json()
                if payload["status"]["code"] != 200:
                    raise SystemExit(f"visualKNN failed: {payload['status']}")
                found = [record["_id"] for record in payload["answer_records"]]
                mismatches += found != expected[queries.label][i]
            row = {"query": queries.label, "engine": "HTTP visualKNN", **percentiles(times), "mismatches": mismatches}
            rows.append(row)
            print_row(row)
    return rows


def serve_and_measure(
    url: str, collection_id: str, sets: list[QuerySet], expected: dict[str, list[list[str]]]
) -> dict[str, Any]:
    """Start ``matchdb serve`` on the database, time its load, read its memory, then run the HTTP queries."""
    out: dict[str, Any] = {}
    started = time.perf_counter()
    with matchdb_server({"MATCHDB_DATABASE_URL": url}, 1, timeout=120) as server:
        while True:
            payload = httpx.post(f"{server.url}/v2/ping", json={}, timeout=30).json()
            indexes = payload["indexes"]
            if indexes["ready"] and not indexes["loading"]:
                break
            time.sleep(0.25)
        out["load_seconds"] = time.perf_counter() - started  # process start, schema check, COPY and build
        pids = [server.process.pid, *_children(server.process.pid)]
        out["rss_bytes"] = {str(pid): rss_bytes(pid) for pid in pids}
        out["records"] = indexes["records"]
        print(
            f"matchdb serve: ready after {out['load_seconds']:.1f} s; RSS "
            + ", ".join(f"{v / 1e6:,.0f} MB" for v in out["rss_bytes"].values())
        )
        out["rows"] = measure_http(server.url, collection_id, sets, expected)
    return out


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    found = [int(p) for p in text.split()]
    return found + [c for p in found for c in _children(p)]


# ----- the run ---------------------------------------------------------------------------------------------------


def faiss_indexes(collection: hashgen.Collection, pruning: str) -> dict[str, dict[str, Any]]:
    """FAISS's flat index and a pruning one per hash type, over the same packed hashes."""
    if pruning == "none":
        return {}
    faiss = faiss_module()
    faiss.omp_set_num_threads(1)
    out: dict[str, dict[str, Any]] = {}
    n = len(collection.records)
    for kind in hashgen.KINDS:
        packed = np.ascontiguousarray(collection.records.packed(kind))
        d = packed.shape[1] * 8
        flat = faiss.IndexBinaryFlat(d)
        flat.add(packed)
        out[kind] = {"FAISS IndexBinaryFlat": flat}
        started = time.perf_counter()
        if pruning == "multihash":
            near = 4 if kind == "phash" else max_bits_within(5.0, kind)
            tables = 4 if kind == "phash" else 17
            bits = 16 if kind == "phash" else min(24, max(8, n.bit_length() - 4))
            index = faiss.IndexBinaryMultiHash(d, tables, bits)
            index.nflip = -(-(near + 1) // tables) - 1  # exact within ``near`` (pigeonhole)
            name = f"FAISS MultiHash {tables}x{bits} nflip {index.nflip}"
        else:
            quantizer = faiss.IndexBinaryFlat(d)
            index = faiss.IndexBinaryIVF(quantizer, d, 4096)
            index.train(packed[np.random.default_rng(0).choice(n, min(n, 200_000), replace=False)])
            index.nprobe = 16
            index.own_fields = True
            quantizer.this.disown()
            name = "FAISS IVF 4096 nprobe 16"
        index.add(packed)
        out[kind][name] = index
        print(f"{kind}: {name} built in {time.perf_counter() - started:.1f} s", flush=True)
    return out


def query_sets(collection: hashgen.Collection, count: int, seed: int) -> list[QuerySet]:
    rng = np.random.default_rng(seed)
    sizes = np.bincount(collection.group)[collection.group]
    grouped = np.flatnonzero(sizes >= 2)
    single = np.flatnonzero(sizes == 1)
    n = len(collection.records)
    return [
        QuerySet("(a) phash r<=4", "phash", 100, 6.25, rng.integers(0, n, count)),
        QuerySet("(b) bmh1 near-dup k=1 5%", "bmh1", 1, 5.0, rng.choice(grouped, count)),
        QuerySet("(c) bmh1 k=10 unrelated", "bmh1", 10, None, rng.choice(single, count)),
    ]


def generated(args: argparse.Namespace) -> hashgen.Collection:
    """hashgen's collection for these arguments, kept in ``--cache`` (a folder) if given: generating ten million
    records takes most of an hour."""
    path = args.cache / f"hashgen-{args.records}-{args.seed}.npz" if args.cache else None
    if path is not None and path.exists():
        with np.load(path) as saved:
            records = hashgen.HashSet(saved["bmh1"], saved["phash"], saved["source"])
            queries = hashgen.HashSet(saved["q_bmh1"], saved["q_phash"], saved["q_source"])
            flips = {kind: saved[f"flips_{kind}"] for kind in hashgen.KINDS}
            return hashgen.Collection(records, saved["group"], queries, queries, flips)
    collection = hashgen.generate(args.corpus, args.records, 10, args.seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "bmh1": collection.records.bmh1,
            "phash": collection.records.phash,
            "source": collection.records.source,
            "group": collection.group,
            "q_bmh1": collection.queries.bmh1,
            "q_phash": collection.queries.phash,
            "q_source": collection.queries.source,
        }
        arrays.update({f"flips_{kind}": collection.copy_flips[kind] for kind in hashgen.KINDS})
        np.savez(path, **arrays)
    return collection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="queries per kind of query")
    parser.add_argument("--write-sample", type=int, default=20_000, help="records stored through upsert_records")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--recall-queries", type=int, default=10_000)
    parser.add_argument("--faiss-pruning", choices=["multihash", "ivf", "none"], default="multihash")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--cache", type=Path, help="folder to keep the generated hashes in (and read them from)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    server = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not server:
        sys.exit("set MATCHDB_TEST_DATABASE_URL to a Postgres server (a scratch database is made on it)")

    report: dict[str, Any] = {"machine": machine_facts(), "records": args.records, "batch": args.batch}
    for key, value in report["machine"].items():
        print(f"{key}: {value}")
    started = time.perf_counter()
    collection = generated(args)
    report["generate_seconds"] = time.perf_counter() - started
    print(f"{args.records:,} records ready in {report['generate_seconds']:.0f} s", flush=True)
    sets = query_sets(collection, args.queries, args.seed)

    url, drop = fresh_postgres_database(server)
    try:
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as connection:
            collection_id = create_collection(connection, "default", "scale").id
        sample = min(args.write_sample, args.records)
        report["write_rows_per_s"] = write(engine, collection_id, collection.records, sample, args.batch)
        report["copy_rows_per_s"] = bulk_copy(engine, collection_id, collection.records, sample)
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE records")
            size = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        report["database_bytes_per_record"] = size / args.records
        print(
            f"write: {report['write_rows_per_s']:,.0f} rows/s (upsert_records, {sample:,} rows), "
            f"COPY {report['copy_rows_per_s']:,.0f} rows/s; database {size / 1e9:.2f} GB "
            f"({size / args.records:,.0f} bytes/record)",
            flush=True,
        )
        expected: dict[str, list[list[str]]] = {}
        report.update(in_process(engine, collection_id, collection, sets, args, expected))
        engine.dispose()
        gc.collect()
        if not args.no_http:
            report["http"] = serve_and_measure(url, collection_id, sets, expected)
    finally:
        drop()
    report["load_average_at_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


def in_process(
    engine: Any,
    collection_id: str,
    collection: hashgen.Collection,
    sets: list[QuerySet],
    args: argparse.Namespace,
    expected: dict[str, list[list[str]]],
) -> dict[str, Any]:
    """Load, memory, catch-up, the query rows and the recall, with the indexes in this process."""
    out: dict[str, Any] = {}
    registry = IndexRegistry(engine)
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    started = time.perf_counter()
    loaded = registry.get(collection_id, wait=3600)
    out["load_seconds"] = time.perf_counter() - started
    traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["index_bytes_per_record"] = traced[0] / loaded.size
    out["load_peak_bytes_per_record"] = traced[1] / loaded.size
    out["rss_growth_bytes_per_record"] = (rss_bytes() - rss_before) / loaded.size
    out["index_arrays_bytes_per_record"] = {k: getattr(v, "nbytes", 0) / loaded.size for k, v in loaded.by_kind.items()}
    print(
        f"index load from Postgres: {out['load_seconds']:.1f} s for {loaded.size:,} records; "
        f"{out['index_bytes_per_record']:.0f} bytes/record kept (tracemalloc; peak during the load "
        f"{out['load_peak_bytes_per_record']:.0f}), RSS +{out['rss_growth_bytes_per_record']:.0f} bytes/record",
        flush=True,
    )
    samples = []
    for _ in range(1000):
        started = time.perf_counter()
        registry.catch_up()
        samples.append(time.perf_counter() - started)
    out["idle_catch_up"] = percentiles(samples)
    with engine.connect() as connection:
        row_ids = load_hashes(connection, collection_id).keys  # insertion order = record order
    faiss = faiss_indexes(collection, args.faiss_pruning)
    settings = Settings.from_env()
    with ThreadPoolExecutor(1) as pool:  # the loader hashes query images; these queries are stored records
        loader = loader_from_settings(settings, fetcher_from_settings(settings), pool)
        service = CollectionService(engine, loader, registry)
        out["queries"] = measure_queries(sets, collection, row_ids, loaded, service, collection_id, faiss, expected)
    del faiss
    gc.collect()
    if args.recall_queries:
        out["recall"] = near_duplicate_recall(collection, row_ids, loaded, args.recall_queries, args.seed)
        print(f"near-duplicate recall: {out['recall']}", flush=True)
    registry.forget(collection_id)
    registry.close()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
