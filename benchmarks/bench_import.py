"""Import of precomputed hashes (issue 27, item 6): rows/s of ``matchdb ingest`` of a manifest of ``bmh1`` and
``phash`` strings, on Postgres and SQLite, with the baselines of the same run.

    nice .venv/bin/python benchmarks/bench_import.py --rows 1000000 --corpus /work/shared/corpus \\
        --postgres postgresql://postgres:postgres@127.0.0.1:5432/test --cache /tmp/bench-import-cache

It generates ``--rows`` realistic hashes (:mod:`benchmarks.hashgen`) into a JSONL manifest (``_id``, both hashes as
the strings ``visual_hash`` returns, two attributes), then for each database:

* **import**: the real CLI (``python -m matchdb ingest --create --collection C manifest.jsonl``, a subprocess) into
  an empty collection, ``--repeats`` times (the collection is deleted in between), wall time, median;
* **rerun**: the same command once more over the stored collection (every row unchanged);
* **per-row path**: the image ingest's storage path (:func:`~matchdb.storage.records.upsert_records`, 200 records
  per transaction) on the first ``--baseline-rows`` rows, hashes already parsed: what importing through the
  existing write path would cost;
* **ceiling**: the same rows loaded bare, from a buffer prepared beforehand: ``COPY`` into ``records`` itself (its
  unique index and foreign key) and into a scratch table without constraints on Postgres, one ``executemany``
  into a scratch table on SQLite.

Postgres runs in a database of its own (``bench_import_<random>``), dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import hashgen
from benchmarks.bench_scale import generated
from matchdb.storage.collections import create_collection, delete_collection, find_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import NewRecord, upsert_records
from matchdb.storage.transactions import Writer

ROOT = Path(__file__).resolve().parents[1]


def strings(packed: np.ndarray) -> list[str]:
    """Packed hashes as the API's strings (8 digits per byte, most significant first)."""
    digits = np.unpackbits(packed, axis=1, bitorder="big") + ord("0")
    width = digits.shape[1]
    flat = digits.tobytes().decode("ascii")
    return [flat[i * width : (i + 1) * width] for i in range(len(packed))]


def write_manifest(path: Path, hashes: hashgen.HashSet) -> None:
    """``_id``, the two hash strings and two attributes per line, written a chunk at a time."""
    with path.open("w") as handle:
        for start in range(0, len(hashes), 100_000):
            stop = min(start + 100_000, len(hashes))
            bmh1, phash = strings(hashes.bmh1[start:stop]), strings(hashes.phash[start:stop])
            handle.writelines(
                json.dumps({"_id": f"img-{start + i:08d}", "bmh1": b, "phash": p, "shop": f"s{(start + i) % 97}"})
                + "\n"
                for i, (b, p) in enumerate(zip(bmh1, phash, strict=True))
            )


def cli_import(url: str, manifest: Path, collection: str) -> tuple[float, str]:
    """Wall seconds of the real ``matchdb ingest`` and its summary line."""
    env = {**os.environ, "MATCHDB_DATABASE_URL": url}
    command = [sys.executable, "-m", "matchdb", "ingest", "--create", "--collection", collection, str(manifest)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"ingest failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds, result.stdout.strip().splitlines()[-1]


def drop_collection(engine: Engine, name: str) -> None:
    with engine.begin() as connection:
        info = find_collection(connection, None, name)
        if info is not None:
            delete_collection(connection, info.id)


def per_row_path(engine: Engine, hashes: hashgen.HashSet, rows: int) -> float:
    """rows/s of the image ingest's write path (200 records per transaction) for the first ``rows`` hashes."""
    with engine.begin() as connection:
        collection_id = create_collection(connection, "default", "per-row").id
    writer = Writer(engine)
    started = time.perf_counter()
    for start in range(0, rows, 200):
        batch = [
            NewRecord(
                f"img-{i:08d}", {"shop": f"s{i % 97}"}, None, 0, 0, "", bytes(hashes.bmh1[i]), bytes(hashes.phash[i])
            )
            for i in range(start, min(start + 200, rows))
        ]
        writer.run(lambda connection, batch=batch: upsert_records(connection, collection_id, batch))  # type: ignore[misc]
    rate = rows / (time.perf_counter() - started)
    drop_collection(engine, "per-row")
    return rate


_COLUMNS = "collection_id, ext_id, attributes, width, height, checksum, bmh1, phash, hash_version, updated_at"


def copy_lines(collection_id: str, hashes: hashgen.HashSet) -> Iterator[str]:
    """The COPY text of every row, a chunk at a time (prepared before the clock starts)."""
    now = datetime.now(UTC).isoformat()
    for start in range(0, len(hashes), 100_000):
        stop = min(start + 100_000, len(hashes))
        bmh1, phash = hashes.bmh1[start:stop].tobytes().hex(), hashes.phash[start:stop].tobytes().hex()
        yield "".join(
            f'{collection_id}\timg-{start + i:08d}\t{{"shop": "s{(start + i) % 97}"}}\t0\t0\t\t'
            f"\\\\x{bmh1[i * 242 : (i + 1) * 242]}\t\\\\x{phash[i * 16 : (i + 1) * 16]}\t1\t{now}\n"
            for i in range(stop - start)
        )


def postgres_ceilings(engine: Engine, hashes: hashgen.HashSet) -> dict[str, float]:
    """rows/s of a bare COPY of the rows into ``records`` and into a scratch table without constraints."""
    with engine.begin() as connection:
        collection_id = create_collection(connection, "default", "ceiling").id
        connection.execute(text("CREATE TABLE scratch AS SELECT * FROM records WITH NO DATA"))
    chunks = list(copy_lines(collection_id, hashes))
    out = {}
    for table in ("records", "scratch"):
        with engine.begin() as connection:
            raw: Any = connection.connection.driver_connection
            started = time.perf_counter()
            with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({_COLUMNS}) FROM STDIN") as copy:
                for chunk in chunks:
                    copy.write(chunk)
        out[f"bare COPY into {table}"] = len(hashes) / (time.perf_counter() - started)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE scratch"))
    drop_collection(engine, "ceiling")
    return out


def sqlite_ceiling(engine: Engine, hashes: hashgen.HashSet) -> dict[str, float]:
    """rows/s of one executemany of the rows into a scratch table without constraints."""
    now = datetime.now(UTC).isoformat()
    rows = [
        (
            "c",
            f"img-{i:08d}",
            f'{{"shop": "s{i % 97}"}}',
            0,
            0,
            "",
            bytes(hashes.bmh1[i]),
            bytes(hashes.phash[i]),
            1,
            now,
        )
        for i in range(len(hashes))
    ]
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE scratch AS SELECT * FROM records WHERE 0")
        started = time.perf_counter()
        connection.exec_driver_sql(f"INSERT INTO scratch ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        rate = len(rows) / (time.perf_counter() - started)
        connection.exec_driver_sql("DROP TABLE scratch")
    return {"bare executemany into a scratch table": rate}


def measure(
    name: str, url: str, manifest: Path, hashes: hashgen.HashSet, args: argparse.Namespace, ceilings: Callable[..., Any]
) -> None:
    engine = make_engine(url)
    upgrade(engine)
    rows = len(hashes)
    rates = []
    for repeat in range(args.repeats):
        if repeat:
            drop_collection(engine, "bench")
        seconds, summary = cli_import(url, manifest, "bench")
        rates.append(rows / seconds)
        print(f"{name}: import {repeat + 1}: {seconds:.1f} s, {rows / seconds:,.0f} rows/s  [{summary}]", flush=True)
    seconds, summary = cli_import(url, manifest, "bench")
    print(f"{name}: rerun (all unchanged): {seconds:.1f} s, {rows / seconds:,.0f} rows/s  [{summary}]", flush=True)
    drop_collection(engine, "bench")
    baseline = min(rows, args.baseline_rows)
    per_row = per_row_path(engine, hashes, baseline)
    print(f"{name}: per-row path (upsert_records, 200 per transaction, {baseline:,} rows): {per_row:,.0f} rows/s")
    for label, rate in ceilings(engine, hashes).items():
        print(f"{name}: ceiling, {label}: {rate:,.0f} rows/s")
    print(
        f"{name}: import median of {args.repeats}: {statistics.median(rates):,.0f} rows/s "
        f"(runs: {', '.join(f'{rate:,.0f}' for rate in rates)})",
        flush=True,
    )
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--corpus", type=Path, required=True, help="the photo corpus hashgen starts from")
    parser.add_argument("--seed", type=int, default=hashgen.DEFAULT_SEED)
    parser.add_argument("--cache", type=Path, help="folder to keep the generated hashes in (and read them from)")
    parser.add_argument("--postgres", help="a Postgres server URL (a database of its own is made there)")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rows", type=int, default=100_000)
    args = parser.parse_args()
    hashes = generated(argparse.Namespace(records=args.rows, seed=args.seed, corpus=args.corpus, cache=args.cache))
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        manifest = Path(folder) / "hashes.jsonl"
        write_manifest(manifest, hashes.records)
        print(f"{args.rows:,} rows, manifest {manifest.stat().st_size / 1e6:,.0f} MB", flush=True)
        if args.postgres:
            base = make_url(args.postgres).set(drivername="postgresql+psycopg")
            name = f"bench_import_{secrets.token_hex(4)}"
            admin = create_engine(base, isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                url = base.set(database=name).render_as_string(hide_password=False)
                measure("postgres", url, manifest, hashes.records, args, postgres_ceilings)
            finally:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        if not args.no_sqlite:
            url = f"sqlite:///{Path(folder) / 'bench.sqlite3'}"
            measure("sqlite", url, manifest, hashes.records, args, sqlite_ceiling)


if __name__ == "__main__":
    main()
