"""A collection of 1,000,000 records on Postgres: write rate, index load, memory, idle catch-up, visualKNN latency.

    MATCHDB_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_scale.py --records 1000000 --json /tmp/scale.json

Records carry realistic hashes of both types from ``benchmarks/hashgen.py`` (hashing a million images would take
hours; hashing is measured by ``bench_hashing.py``). In a scratch database on the server it measures, in one run:

1. **write rate**: the records stored through ``matchdb.storage.records.upsert_records``, the function every API
   insert and ``matchdb ingest`` batch goes through (row, change-log entry, one transaction per batch), in batches
   of ``--batch`` (100 = the API's per-request maximum; ingest uses 100 too), rows/s;
2. **index load**: ``IndexRegistry.get`` from cold (read every hash, build both hash types' indexes), seconds, and
   the memory it keeps (tracemalloc, and the process's RSS growth), bytes per record;
3. **idle catch-up**: the change-log check every collection query makes first, when nothing changed, p50/p99;
4. **visualKNN**: ``CollectionService.knn`` (catch-up, exact index search, fetch of the answer's records from
   Postgres: everything the endpoint does after parsing and hashing the query) at radius 5% and 10% (k=100) and
   k=10 without radius, p50/p99, next to a numpy linear scan (XOR + popcount over the same packed hashes, then the
   same selection; ``bench_index.LinearScan``, uint64 words in cache-sized chunks) of the index part alone, with
   the ratio. Queries: half are copies of stored records, half
   unrelated hashes (hashgen's mix).

It prints the machine facts and a table, and drops the scratch database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import hashgen  # noqa: E402
from benchmarks.bench_index import LinearScan, machine_facts  # noqa: E402
from matchdb.config import Settings  # noqa: E402
from matchdb.hashing import NBITS, VisualHash  # noqa: E402
from matchdb.index.kernels import words_of_packed  # noqa: E402
from matchdb.service.collections import CollectionService, max_bits_within  # noqa: E402
from matchdb.service.indexes import IndexRegistry  # noqa: E402
from matchdb.service.records import fetcher_from_settings, loader_from_settings  # noqa: E402
from matchdb.storage.collections import create_collection  # noqa: E402
from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from matchdb.storage.records import NewRecord, upsert_records  # noqa: E402
from matchdb.storage.schema import records  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def rss_bytes() -> int:
    """Resident set size now (Linux /proc), not the peak."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def write(engine: Any, collection_id: str, stored: hashgen.HashSet, batch: int) -> float:
    """Store every record through the API's own write path; returns rows/s."""
    started = time.perf_counter()
    total = len(stored)
    for start in range(0, total, batch):
        rows = [
            NewRecord(
                f"r{i}",
                {"shard": i % 16},
                None,
                640,
                480,
                f"{i:064x}",
                stored.bmh1[i].tobytes(),
                stored.phash[i].tobytes(),
            )
            for i in range(start, min(total, start + batch))
        ]
        with engine.begin() as connection:
            upsert_records(connection, collection_id, rows)
        if start and start % (batch * 1000) == 0:
            rate = start / (time.perf_counter() - started)
            print(f"  {start:,} rows, {rate:,.0f} rows/s", file=sys.stderr)
    return total / (time.perf_counter() - started)


def scan_answer(scan: LinearScan, query: np.ndarray, k: int, max_bits: int | None) -> np.ndarray:
    """The baseline (issue 6's linear scan): every distance, then the k nearest within ``max_bits``, ties by
    position."""
    if max_bits is None:
        return scan.nearest(query, k)[1]
    return scan.search(query, max_bits)[1][:k]


async def knn_rows(
    service: CollectionService, collection_id: str, queries: hashgen.HashSet, kind: str, k: int, radius: float | None
) -> tuple[list[float], list[int]]:
    times = []
    found = []
    for i in range(len(queries)):
        query = VisualHash(kind, queries.packed(kind)[i].tobytes())
        started = time.perf_counter()
        answer = await service.knn(collection_id, [query], k, radius, None, None)
        times.append(time.perf_counter() - started)
        found.append(len(answer.records))
    return times, found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    server = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not server:
        sys.exit("set MATCHDB_TEST_DATABASE_URL to a Postgres server (a scratch database is made on it)")

    report: dict[str, Any] = {"machine": machine_facts(), "records": args.records, "batch": args.batch}
    for key, value in report["machine"].items():
        print(f"{key}: {value}")
    started = time.perf_counter()
    collection = hashgen.generate(args.corpus, args.records, args.queries, args.seed)
    print(f"generated {args.records:,} records and {args.queries} queries in {time.perf_counter() - started:.0f} s")

    url, drop = fresh_postgres_database(server)
    try:
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as connection:
            collection_id = create_collection(connection, "default", "scale").id
        report["write_rows_per_s"] = write(engine, collection_id, collection.records, args.batch)
        print(f"write: {report['write_rows_per_s']:,.0f} rows/s in batches of {args.batch}")
        with engine.connect() as connection:
            size = connection.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        report["database_bytes_per_record"] = size / args.records
        print(f"database size: {size / 1e6:,.0f} MB ({size / args.records:,.0f} bytes/record incl. indexes, log)")

        registry = IndexRegistry(engine)
        rss_before = rss_bytes()
        tracemalloc.start()
        started = time.perf_counter()
        loaded = registry.get(collection_id, wait=3600)
        report["load_seconds"] = time.perf_counter() - started
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        report["index_bytes_per_record"] = traced / loaded.size
        report["rss_growth_bytes_per_record"] = (rss_bytes() - rss_before) / loaded.size
        print(
            f"index load from Postgres: {report['load_seconds']:.1f} s for {loaded.size:,} records; "
            f"{report['index_bytes_per_record']:.0f} bytes/record kept (tracemalloc), "
            f"RSS +{report['rss_growth_bytes_per_record']:.0f} bytes/record"
        )

        samples = []
        for _ in range(2000):
            started = time.perf_counter()
            registry.catch_up()
            samples.append(time.perf_counter() - started)
        idle = report["idle_catch_up"] = percentiles(samples)
        print(f"idle catch-up: p50 {idle['p50_ms']:.2f} ms, p99 {idle['p99_ms']:.2f} ms")

        with engine.connect() as connection:  # record position -> row id, for comparing with the scan
            ids = {ext_id: row_id for ext_id, row_id in connection.execute(select(records.c.ext_id, records.c.id))}
        row_ids = np.array([ids[f"r{i}"] for i in range(args.records)], np.int64)
        settings = Settings.from_env()
        with ThreadPoolExecutor(1) as pool:  # the loader hashes query images; these queries are hashes already
            loader = loader_from_settings(settings, fetcher_from_settings(settings), pool)
            report["knn"] = measure_knn(
                CollectionService(engine, loader, registry), collection_id, collection, loaded, row_ids
            )
        engine.dispose()
    finally:
        drop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def measure_knn(
    service: CollectionService, collection_id: str, collection: hashgen.Collection, loaded: Any, row_ids: np.ndarray
) -> list[dict[str, Any]]:
    """visualKNN through the service, the index alone and the numpy scan, per hash type and query kind."""
    rows = []
    print(
        f"\n{'kind':6} {'query':12} {'visualKNN p50/p99 ms':>22} {'index p50':>10} {'scan p50/p99 ms':>18} "
        f"{'scan/index':>10} {'scan/visualKNN':>14} {'answers':>8}"
    )
    for kind in hashgen.KINDS:
        nwords = (NBITS[kind] + 63) // 64
        scan = LinearScan(words_of_packed(collection.records.packed(kind), nwords))
        query_words = words_of_packed(collection.queries.packed(kind), nwords)
        index = loaded.by_kind[kind]
        for label, k, radius in (("radius 5%", 100, 5.0), ("radius 10%", 100, 10.0), ("k=10", 10, None)):
            max_bits = None if radius is None else max_bits_within(radius, kind)
            service_times, found = asyncio.run(knn_rows(service, collection_id, collection.queries, kind, k, radius))
            index_times, scan_times = [], []
            for i in range(len(collection.queries)):
                query = collection.queries.packed(kind)[i]
                value = int.from_bytes(query.tobytes(), "little")
                started = time.perf_counter()
                hits = index.nearest(value, k, max_bits)
                index_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                expected = row_ids[scan_answer(scan, query_words[i], k, max_bits)].tolist()
                scan_times.append(time.perf_counter() - started)
                if [hit.key for hit in hits] != expected:
                    raise SystemExit(f"{kind} {label}: index and scan disagree on query {i}")
            row: dict[str, Any] = {
                "kind": kind,
                "query": label,
                "visualknn": percentiles(service_times),
                "index": percentiles(index_times),
                "scan": percentiles(scan_times),
                "answers_median": statistics.median(found),
            }
            row["scan_over_visualknn_p50"] = row["scan"]["p50_ms"] / row["visualknn"]["p50_ms"]
            row["scan_over_index_p50"] = row["scan"]["p50_ms"] / row["index"]["p50_ms"]
            rows.append(row)
            print(
                f"{kind:6} {label:12} {row['visualknn']['p50_ms']:10.2f} / {row['visualknn']['p99_ms']:8.2f} "
                f"{row['index']['p50_ms']:10.2f} {row['scan']['p50_ms']:8.2f} / {row['scan']['p99_ms']:7.2f} "
                f"{row['scan_over_index_p50']:9.1f}x {row['scan_over_visualknn_p50']:13.1f}x "
                f"{row['answers_median']:8.0f}"
            )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
