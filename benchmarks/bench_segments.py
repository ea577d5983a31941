"""Index segments at scale on Postgres: ``matchdb serve`` restart to ready with and without segments, the workers'
memory (sum of PSS, and of anonymous PSS) with ``--workers 4``, and query latency over HTTP mapped vs heap.

    MATCHDB_TEST_DATABASE_URL=postgresql://postgres:postgres@127.0.0.1:5432/test nice \\
        .venv/bin/python benchmarks/bench_segments.py --records 1000000 --cache /tmp/hashcache --json /tmp/seg.json

The collection is bench_scale's (``hashgen`` hashes, COPYed into a scratch database dropped at the end). Runs, one
server at a time, each a fresh ``matchdb serve`` process:

1. heap (``MATCHDB_INDEX_FOLDER=off``), 1 worker: ready time (COPY + build, as before segments), query rows;
2. segments, 1 worker, empty folder: ready time (COPY + build + write);
3. segments, 1 worker, restart: ready time (map + CRC check + catch-up), the first query, query rows;
4. heap, ``--workers 4``: ready time, sum of the workers' PSS (and anonymous PSS);
5. segments, ``--workers 4``, restart: the same.

Every HTTP answer is checked against a numpy scan of the stored hashes (bench_scale's query sets (a), (b), (c)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import bench_scale, hashgen  # noqa: E402
from benchmarks.bench_index import LinearScan, machine_facts  # noqa: E402
from matchdb.hashing import NBITS  # noqa: E402
from matchdb.index.kernels import words_of_packed  # noqa: E402
from matchdb.storage.collections import create_collection  # noqa: E402
from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from matchdb.storage.hash_load import load_hashes  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402


def expected_answers(
    collection: hashgen.Collection, sets: list[bench_scale.QuerySet], row_ids: np.ndarray
) -> dict[str, list[list[str]]]:
    """Each query's answer as ``_id`` values, from a numpy scan (the truth the HTTP answers must equal)."""
    out: dict[str, list[list[str]]] = {}
    for queries in sets:
        words = words_of_packed(collection.records.packed(queries.kind), (NBITS[queries.kind] + 63) // 64)
        engines = bench_scale.Engines(queries, collection.records, row_ids, _NoIndex())
        call = engines.scan_call(LinearScan(words), words)
        answers = [call(i) for i in range(len(queries.positions))]
        out[queries.label] = [[f"r{p}" for p in np.searchsorted(row_ids, keys).tolist()] for _, keys in answers]
    return out


class _NoIndex:
    def __init__(self) -> None:
        self.by_kind: dict[str, None] = {"bmh1": None, "phash": None}


def pss(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) of a process, bytes (/proc/<pid>/smaps_rollup)."""
    found = {"Pss:": 0, "Pss_Anon:": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in found:
            found[parts[0]] = int(parts[1]) * 1024
    return found["Pss:"], found["Pss_Anon:"]


def wait_ready(url: str, workers: int) -> None:
    """Until ``/v2/ping`` on fresh connections (the kernel spreads them over the workers) reports every index ready
    ``8 * workers`` times in a row."""
    in_a_row = 0
    while in_a_row < 8 * workers:
        payload = httpx.post(f"{url}/v2/ping", json={}, headers={"Connection": "close"}, timeout=60).json()
        indexes = payload["indexes"]
        in_a_row = in_a_row + 1 if indexes["ready"] and not indexes["loading"] and indexes["records"] else 0
        if not in_a_row:
            time.sleep(0.1)


def run(
    label: str,
    env: dict[str, str],
    workers: int,
    collection_id: str,
    sets: list[bench_scale.QuerySet],
    expected: dict[str, list[list[str]]],
    queries: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {"run": label, "workers": workers}
    started = time.perf_counter()
    with matchdb_server(env, workers, timeout=600) as server:
        wait_ready(server.url, workers)
        out["ready_seconds"] = time.perf_counter() - started
        first = sets[2]
        body = {"query_record": {"_id": f"r{first.positions[0]}"}, "k": first.k, "hash_type": first.kind}
        started = time.perf_counter()
        httpx.post(f"{server.url}/v2/visualKNN", json=body, headers={"collection-id": collection_id}, timeout=60)
        out["first_query_ms"] = 1000 * (time.perf_counter() - started)
        time.sleep(2)
        pids = [server.process.pid, *bench_scale._children(server.process.pid)]  # (one worker: the server itself)
        memory = [pss(pid) for pid in pids]
        out["pss_sum_bytes"] = sum(m[0] for m in memory)
        out["pss_anon_sum_bytes"] = sum(m[1] for m in memory)
        print(
            f"{label}: ready after {out['ready_seconds']:.2f} s, first query {out['first_query_ms']:.1f} ms; "
            f"workers' PSS {out['pss_sum_bytes'] / 1e6:,.0f} MB (anonymous {out['pss_anon_sum_bytes'] / 1e6:,.0f} MB)",
            flush=True,
        )
        if queries:
            out["rows"] = bench_scale.measure_http(server.url, collection_id, sets, expected)
            if any(row["mismatches"] for row in out["rows"]):
                raise SystemExit(f"{label}: HTTP answers differ from the scan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300, help="queries per kind of query")
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--cache", type=Path, help="folder to keep the generated hashes in (and read them from)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    server_url = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not server_url:
        sys.exit("set MATCHDB_TEST_DATABASE_URL to a Postgres server (a scratch database is made on it)")
    report: dict[str, Any] = {"machine": machine_facts(), "records": args.records, "runs": []}
    collection = bench_scale.generated(args)
    sets = bench_scale.query_sets(collection, args.queries, args.seed)
    url, drop = fresh_postgres_database(server_url)
    try:
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as connection:
            collection_id = create_collection(connection, "default", "segments").id
        rate = bench_scale.bulk_copy(engine, collection_id, collection.records, 0)
        print(f"{args.records:,} records COPYed at {rate:,.0f} rows/s", flush=True)
        with engine.connect() as connection:
            row_ids = load_hashes(connection, collection_id).keys
        expected = expected_answers(collection, sets, row_ids)
        engine.dispose()
        with tempfile.TemporaryDirectory(prefix="matchdb-segments-") as folder:
            heap = {"MATCHDB_DATABASE_URL": url, "MATCHDB_INDEX_FOLDER": "off"}
            mapped = {"MATCHDB_DATABASE_URL": url, "MATCHDB_INDEX_FOLDER": folder}
            plan = [
                ("heap, 1 worker", heap, 1, True),
                ("segments, 1 worker, first start (writes)", mapped, 1, False),
                ("segments, 1 worker, restart (maps)", mapped, 1, True),
                ("heap, 4 workers", heap, 4, False),
                ("segments, 4 workers, restart (map)", mapped, 4, False),
            ]
            for label, env, workers, queries in plan:
                report["runs"].append(run(label, env, workers, collection_id, sets, expected, queries))
            report["segment_bytes"] = sum(p.stat().st_size for p in Path(folder).glob("*.seg"))
            print(f"segment file: {report['segment_bytes'] / 1e6:,.0f} MB", flush=True)
    finally:
        drop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
