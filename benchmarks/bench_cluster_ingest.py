"""`matchdb ingest --dask-scheduler` next to `matchdb ingest -j N` on the same folder and the same Postgres server.

Starts a Dask cluster on 127.0.0.1 (a scheduler and N single-threaded worker processes), creates a fresh database,
then runs, as subprocesses timed whole (start-up included): a local ingest with ``-j N`` into one collection and a
cluster ingest into another, alternating, ``--repeats`` times each, plus one rerun of each (everything unchanged).
Checks that both stored the same rows (ids, sizes, checksums, hashes) and prints images/s per run.

    .venv/bin/python -m benchmarks.bench_cluster_ingest --folder ../shared/corpus/photos \\
        --database postgresql://postgres:postgres@127.0.0.1:5432/test --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from matchdb.storage import collections as collection_store
from matchdb.storage.database import make_engine
from matchdb.storage.records import get_records, page_ext_ids
from tests.conftest import fresh_postgres_database


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="the images to ingest")
    parser.add_argument("--database", default=os.environ.get("MATCHDB_TEST_DATABASE_URL"), help="a Postgres server")
    parser.add_argument("--workers", type=int, default=2, help="dask workers, and -j of the local ingest")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=50, help="records per chunk (cluster) and per write")
    return parser.parse_args(argv)


def ingest(database: str, collection: str, *options: str) -> tuple[float, str]:
    """Seconds of a whole ``matchdb ingest`` command, and its summary line."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "matchdb", "ingest", "--create", "--collection", collection, *options],
        env={**os.environ, "MATCHDB_DATABASE_URL": database},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"ingest failed ({result.returncode}): {result.stderr}")
    return seconds, result.stdout.strip().splitlines()[-1]


def stored_rows(database: str, collection: str) -> dict[str, tuple[object, ...]]:
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            info = collection_store.find_collection(connection, None, collection)
            assert info is not None
            ids, _count = page_ext_ids(connection, info.id, 1, 10**7)
            found = get_records(connection, info.id, ids)
            return {k: (r.width, r.height, r.checksum, r.bmh1, r.phash) for k, r in found.items()}
    finally:
        engine.dispose()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.database:
        raise SystemExit("give --database (a Postgres server URL) or set MATCHDB_TEST_DATABASE_URL")
    from distributed import LocalCluster

    images = sum(1 for _ in args.folder.rglob("*") if _.is_file())
    print(f"folder {args.folder} ({images} files), {args.workers} workers, load average {os.getloadavg()}")
    database, drop = fresh_postgres_database(args.database)
    cluster = LocalCluster(
        n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        local_opts = ["-j", str(args.workers), "--batch-size", str(args.batch_size), str(args.folder)]
        cluster_opts = ["--dask-scheduler", cluster.scheduler_address, "--batch-size", str(args.batch_size)]
        cluster_opts.append(str(args.folder))
        # images/s of the whole command (start-up, imports, migrations included) and of the ingest itself (the
        # summary's own seconds: listing, hashing, writing)
        rates: dict[str, list[tuple[float, float]]] = {"local": [], "cluster": []}
        for repeat in range(args.repeats):
            for kind, options in (("local", local_opts), ("cluster", cluster_opts)):
                seconds, summary = ingest(database, f"{kind}-{repeat}", *options)
                found = re.search(r"(\d+) new.* in ([\d.]+) s", summary)
                assert found, summary
                new, inside = int(found.group(1)), float(found.group(2))
                rates[kind].append((new / seconds, new / inside))
                print(f"{kind:8} run {repeat + 1}: {seconds:6.1f} s, {new / seconds:6.1f} images/s  ({summary})")
        for kind, options in (("local", local_opts), ("cluster", cluster_opts)):
            seconds, summary = ingest(database, f"{kind}-0", *options)
            print(f"{kind:8} rerun: {seconds:6.1f} s  ({summary})")
        local, remote = stored_rows(database, "local-0"), stored_rows(database, "cluster-0")
        print(f"rows identical: {local == remote} ({len(local)} local, {len(remote)} cluster)")
        for kind, pairs in rates.items():
            whole = ", ".join(f"{a:.1f}" for a, _ in pairs)
            itself = ", ".join(f"{b:.1f}" for _, b in pairs)
            print(f"{kind:8} images/s, whole command: {whole}; ingest itself: {itself}")
        print(f"load average at the end {os.getloadavg()}")
    finally:
        cluster.close()
        drop()


if __name__ == "__main__":
    main()
