"""allRecords and random on a collection of 1,000,000 records in Postgres, over HTTP against a real ``matchdb serve``.

    MATCHDB_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m benchmarks.bench_browse --records 1000000 --json /tmp/browse.json

The records are stored as ``bench_scale.py`` stores them (``hashgen`` hashes, attribute ``shard`` = i % 16, through
``upsert_records``, here in batches of ``--batch``), in a scratch database on the server, dropped at the end. Then
a real ``matchdb serve`` (one uvicorn worker) on that database answers, through one keep-alive HTTP connection,
``--requests`` times each (p50/p99 of the whole round trip: request, JSON, response):

- ``random`` count 10, as Ximilar's client sends it (``fields_to_return: ["_id"]``), without and with a filter
  (``{"shard": 3}``: 1 record in 16);
- ``allRecords?size=1000&page=500`` with ``["_id"]`` and with ``["*"]``, and with a random page each time;
- ``allRecords`` with no size (every record, streamed: what ``get_all_ids`` asks for), 3 times, with the server
  process's peak RSS (VmHWM) before and after: streaming should not raise it by the answer's size.

Baseline, same run, same database: what the SQL alone costs for the same answers without the in-memory row ids
(``ORDER BY random() LIMIT 10``; ``count(*)`` plus ``ORDER BY id OFFSET 499000 LIMIT 1000``), run directly on
Postgres, ``--baseline-requests`` times each.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks import hashgen  # noqa: E402
from benchmarks.bench_index import machine_facts  # noqa: E402
from benchmarks.bench_scale import percentiles, write  # noqa: E402
from matchdb.storage.collections import create_collection  # noqa: E402
from matchdb.storage.database import make_engine, upgrade  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402


def timed(samples: int, call: Callable[[], Any]) -> dict[str, float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return percentiles(times)


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def measure_http(url: str, pid: int, collection: str, requests: int, records: int, page: int) -> dict[str, Any]:
    headers = {"collection-id": collection}
    rng = random.Random(7)
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=600) as client:

        def post(path: str, body: dict[str, Any], expect: int | None = None) -> dict[str, Any]:
            response = client.post(path, json=body)
            response.raise_for_status()
            payload: dict[str, Any] = response.json()
            if expect is not None and len(payload["answer_records"]) != expect:
                raise SystemExit(f"{path}: {len(payload['answer_records'])} records, expected {expect}")
            return payload

        post("/v2/random", {"count": 1})  # the index (and its row ids) is loaded: wait for it once
        ids = {"fields_to_return": ["_id"]}
        pages = records // 1000
        cases: dict[str, Callable[[], Any]] = {
            "random count=10": lambda: post("/v2/random", {"count": 10, **ids}, 10),
            "random count=10, filter 1/16": lambda: post(
                "/v2/random", {"count": 10, "filter": {"shard": 3}, **ids}, 10
            ),
            f"allRecords?size=1000&page={page} [_id]": lambda: post(f"/v2/allRecords?size=1000&page={page}", ids, 1000),
            f"allRecords?size=1000&page={page} [*]": lambda: post(
                f"/v2/allRecords?size=1000&page={page}", {"fields_to_return": ["*"]}, 1000
            ),
            "allRecords?size=1000&page=random [_id]": lambda: post(
                f"/v2/allRecords?size=1000&page={rng.randint(1, pages)}", ids, 1000
            ),
        }
        for label, call in cases.items():
            out[label] = timed(requests, call)
            print(f"{label:42} p50 {out[label]['p50_ms']:8.2f} ms   p99 {out[label]['p99_ms']:8.2f} ms")
        out["server_peak_rss_mib_before_streaming"] = peak_rss_kib(pid) / 1024
        stream = []
        for _ in range(3):
            started = time.perf_counter()
            answer = post("/v2/allRecords", ids, records)
            stream.append(time.perf_counter() - started)
            del answer
        out["allRecords (no size: all) [_id]"] = {"seconds": stream}
        out["server_peak_rss_mib_after_streaming"] = peak_rss_kib(pid) / 1024
        print(f"allRecords, every record ({records:,} _id): {', '.join(f'{s:.1f}' for s in stream)} s")
        print(
            f"server peak RSS: {out['server_peak_rss_mib_before_streaming']:,.0f} MiB before streaming, "
            f"{out['server_peak_rss_mib_after_streaming']:,.0f} MiB after"
        )
    return out


def measure_sql(engine: Any, collection: str, requests: int, page: int) -> dict[str, Any]:
    offset = (page - 1) * 1000
    queries = {
        "SQL: ORDER BY random() LIMIT 10": [
            "SELECT id, ext_id FROM records WHERE collection_id = :c ORDER BY random() LIMIT 10"
        ],
        f"SQL: count(*) + OFFSET {offset} LIMIT 1000": [
            "SELECT count(*) FROM records WHERE collection_id = :c",
            f"SELECT id, ext_id FROM records WHERE collection_id = :c ORDER BY id OFFSET {offset} LIMIT 1000",
        ],
    }
    out: dict[str, Any] = {}
    with engine.connect() as connection:

        def run(statements: list[str]) -> None:
            for statement in statements:
                connection.execute(text(statement), {"c": collection}).fetchall()

        for label, statements in queries.items():
            out[label] = timed(requests, functools.partial(run, statements))
            print(f"{label:42} p50 {out[label]['p50_ms']:8.2f} ms   p99 {out[label]['p99_ms']:8.2f} ms")
    return out


def load(args: argparse.Namespace) -> tuple[str, Callable[[], None], Any, str]:
    """A scratch database holding a collection "browse" of ``args.records`` records: (URL, drop, engine, id)."""
    started = time.perf_counter()
    hashes = hashgen.generate(args.corpus, args.records, 2).records
    print(f"generated {args.records:,} records' hashes in {time.perf_counter() - started:.0f} s")
    url, drop = fresh_postgres_database(os.environ["MATCHDB_TEST_DATABASE_URL"])
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        collection = create_collection(connection, "default", "browse").id
    rate = write(engine, collection, hashes, len(hashes), args.batch)
    print(f"stored {args.records:,} records at {rate:,.0f} rows/s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE records"))  # what autovacuum does after a bulk load
    return url, drop, engine, collection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("MATCHDB_TEST_CORPUS") or str(REPO_ROOT.parent / "shared" / "corpus")
    parser.add_argument("--corpus", type=Path, default=Path(default_corpus))
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--baseline-requests", type=int, default=20)
    parser.add_argument("--page", type=int, default=500, help="the page of 1000 to time")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database and print its URL")
    parser.add_argument("--database", help="measure an existing database kept by --keep instead of loading one")
    args = parser.parse_args(argv)
    if not args.database and not os.environ.get("MATCHDB_TEST_DATABASE_URL"):
        sys.exit("set MATCHDB_TEST_DATABASE_URL to a Postgres server (a scratch database is made on it)")
    report: dict[str, Any] = {"machine": machine_facts(), "records": args.records}
    for key, value in report["machine"].items():
        print(f"{key}: {value}")
    if args.database:
        url, drop = args.database, None
        engine = make_engine(url)
        with engine.connect() as connection:
            collection = connection.execute(text("SELECT id FROM collections WHERE name = 'browse'")).scalar_one()
    else:
        url, drop, engine, collection = load(args)
    try:
        env = {"MATCHDB_DATABASE_URL": url, "MATCHDB_INDEX_WAIT": "600"}
        with matchdb_server(env, timeout=120) as running:
            pid = running.process.pid
            report["http"] = measure_http(running.url, pid, collection, args.requests, args.records, args.page)
        report["baseline"] = measure_sql(engine, collection, args.baseline_requests, args.page)
        engine.dispose()
    finally:
        if args.keep:
            print(f"kept the database: --database {url}")
        elif drop is not None:
            drop()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
