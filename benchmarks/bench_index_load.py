"""How long a server takes to load a 1,000,000-record collection's indexes from Postgres (issue 6's "build from
Postgres" figure), and what they weigh.

    MATCHDB_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/bench_index_load.py --records 1000000

It creates a scratch database on that server, bulk-loads random hashes (bmh1: 961 random bits; phash: 64) with
COPY, then times reading the hashes (binary COPY, next to plain SQLAlchemy rows as the baseline) and
``IndexRegistry.get`` (read, then build NumpyTreeIndex for both hash types), and drops the database. Random hashes
are the hardest case for the pivot tree's build (no structure to exploit).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matchdb.service.indexes import IndexRegistry
from matchdb.storage.collections import create_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.hash_load import _from_rows, load_hashes
from tests.conftest import fresh_postgres_database


def bulk_load(url: str, records: int, seed: int) -> tuple[str, float]:
    """Create a collection and COPY ``records`` rows into it; returns its id and rows/s."""
    import psycopg

    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        collection_id = create_collection(connection, "default", "bench").id
    engine.dispose()
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn, conn.cursor() as cur:
        columns = "collection_id, ext_id, attributes, width, height, checksum, bmh1, phash, hash_version, updated_at"
        with cur.copy(f"COPY records ({columns}) FROM STDIN") as copy:
            for start in range(0, records, 100_000):
                n = min(100_000, records - start)
                bmh1 = rng.integers(0, 256, (n, 121), dtype=np.uint8)
                bmh1[:, 120] &= 1
                phash = rng.integers(0, 256, (n, 8), dtype=np.uint8)
                for i in range(n):
                    copy.write_row(
                        (collection_id, f"r{start + i}", "{}", 1, 1, "x", bmh1[i].tobytes(), phash[i].tobytes(), 1, now)
                    )
    return collection_id, records / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    server = os.environ.get("MATCHDB_TEST_DATABASE_URL")
    if not server:
        sys.exit("set MATCHDB_TEST_DATABASE_URL to a Postgres server")
    url, drop = fresh_postgres_database(server)
    try:
        collection_id, rate = bulk_load(url, args.records, args.seed)
        print(f"COPY of {args.records} records: {rate:,.0f} rows/s")
        engine = make_engine(url)
        for name, read in (("binary COPY (matchdb)", load_hashes), ("SQLAlchemy rows (baseline)", _from_rows)):
            started = time.perf_counter()
            with engine.connect() as connection:
                read(connection, collection_id)
            print(f"read all hashes, {name}: {time.perf_counter() - started:.2f} s")
        tracemalloc.start()
        started = time.perf_counter()
        loaded = IndexRegistry(engine).get(collection_id, wait=3600)
        seconds = time.perf_counter() - started
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        print(f"index load from Postgres (stream + build, both hash types): {seconds:.1f} s for {loaded.size} records")
        print(f"memory traced after the load: {memory / 1e6:.0f} MB ({memory / max(1, loaded.size):.0f} bytes/record)")
        engine.dispose()
    finally:
        drop()


if __name__ == "__main__":
    main()
