"""What record thumbnails cost: bytes stored per record, CPU per image, and insert throughput with and without them.

    .venv/bin/python -m benchmarks.bench_thumbnails --corpus ../shared/corpus --json /tmp/thumbs.json
    MATCHDB_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python -m benchmarks.bench_thumbnails --corpus ../shared/corpus --postgres

Two measurements on the corpus photos (``photos/``, and ``large/`` for the CPU one):

- CPU per image, in this process, one thread: ``hash_image`` (decode + bmh1 + phash) without and with
  ``thumbnail=True`` (the JPEG made from the same decoded pixels), each image timed with the thread's CPU clock
  (``time.thread_time``: on a shared machine, the time others take the core away is left out), both modes in turn
  per image and ``--repeats`` times; the median per image and the sum.
- Insert over HTTP: a real ``matchdb serve`` (one worker, a fresh SQLite file, or with ``--postgres`` a fresh
  database on the server of MATCHDB_TEST_DATABASE_URL) with ``MATCHDB_THUMBNAILS=1`` and ``=0`` in turn, ``--rounds``
  times (modes alternating, so machine noise falls on both); every photo inserted once as ``_base64`` in requests
  of ``--batch`` records, ``--concurrency`` requests in flight. Records/s per run, and the server's CPU seconds
  per record (user + system, of its whole process group, from /proc: unlike records/s, not inflated when other
  processes take the cores); then the bytes: the thumbnails' own bytes per record (mean, p50, p95 of the JPEG
  sizes) and what the database grew by per record with them compared with without (SQLite: file size after a WAL
  checkpoint; Postgres: ``pg_total_relation_size`` of the ``thumbnails`` table, TOAST and index included).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, text

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_index import machine_facts  # noqa: E402
from matchdb.hashing import HASH_TYPES, hash_image  # noqa: E402
from matchdb.storage.database import make_engine  # noqa: E402
from matchdb.storage.schema import thumbnails  # noqa: E402
from tests.conftest import fresh_postgres_database  # noqa: E402
from tests.servers import matchdb_server  # noqa: E402

FOLDERS = ("photos", "large")
BOOTSTRAP = "bench-thumbnails-token-0123456789abcdef"


def images_of(corpus: Path, folder: str) -> list[bytes]:
    paths = sorted((corpus / folder).glob("*"))
    return [path.read_bytes() for path in paths if path.suffix.lower() in (".jpg", ".jpeg", ".png")]


def cpu_per_image(images: list[bytes], repeats: int) -> dict[str, Any]:
    """Median and total thread-CPU ms per image for hashing alone and hashing plus the thumbnail."""
    per_image: dict[bool, list[list[float]]] = {False: [[] for _ in images], True: [[] for _ in images]}
    sizes: list[int] = []
    for repeat in range(repeats):
        for index, data in enumerate(images):
            order = (False, True) if (index + repeat) % 2 == 0 else (True, False)
            for thumbnail in order:
                started = time.thread_time()
                hashed = hash_image(data, HASH_TYPES, thumbnail=thumbnail)
                per_image[thumbnail][index].append(time.thread_time() - started)
                if thumbnail and repeat == 0:
                    sizes.append(len(hashed.thumbnail or b""))
    out: dict[str, Any] = {"images": len(images), "repeats": repeats, "thumbnail_bytes_mean": statistics.mean(sizes)}
    for thumbnail, label in ((False, "hash"), (True, "hash+thumbnail")):
        best = [min(times) for times in per_image[thumbnail]]  # each image's least disturbed run
        out[label] = {"median_ms": 1000 * statistics.median(best), "total_s": sum(best)}
    out["extra_cpu_percent"] = 100 * (out["hash+thumbnail"]["total_s"] / out["hash"]["total_s"] - 1)
    return out


@contextmanager
def database(postgres: bool, folder: Path, name: str) -> Iterator[tuple[str, Path | None]]:
    """A fresh database URL (and the SQLite file, if SQLite)."""
    if not postgres:
        path = folder / f"{name}.sqlite3"
        yield f"sqlite:///{path}", path
        return
    url, drop = fresh_postgres_database(os.environ["MATCHDB_TEST_DATABASE_URL"])
    try:
        yield url, None
    finally:
        drop()


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(group: int) -> float:
    """User + system CPU seconds used so far by every process of a process group (the server and its workers).
    On a shared machine this is the cost that waiting for a core does not inflate."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # fields after the command: state, ppid, pgrp, ..., utime (12), stime (13)
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def stored_bytes(url: str, path: Path | None) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            sizes = [int(n) for (n,) in connection.execute(select(func.length(thumbnails.c.data)))]
            if path is None:
                on_disk = int(connection.execute(text("SELECT pg_total_relation_size('thumbnails')")).scalar_one())
            else:
                connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
                on_disk = path.stat().st_size
    finally:
        engine.dispose()
    ordered = sorted(sizes)
    return {
        "thumbnails": len(sizes),
        "mean_bytes": statistics.mean(sizes) if sizes else 0,
        "p50_bytes": statistics.median(ordered) if sizes else 0,
        "p95_bytes": ordered[int(0.95 * (len(ordered) - 1))] if sizes else 0,
        "on_disk_bytes": on_disk,  # SQLite: the whole file; Postgres: the thumbnails table alone
    }


def insert_run(images: list[bytes], on: bool, args: argparse.Namespace, folder: Path, name: str) -> dict[str, Any]:
    bodies = []
    for start in range(0, len(images), args.batch):
        records = [
            {"_id": f"photo-{start + i}", "_base64": base64.b64encode(data).decode()}
            for i, data in enumerate(images[start : start + args.batch])
        ]
        bodies.append(json.dumps({"records": records}).encode())
    with database(args.postgres, folder, name) as (url, path):
        env = {"MATCHDB_DATABASE_URL": url, "MATCHDB_BOOTSTRAP_TOKEN": BOOTSTRAP}
        env["MATCHDB_THUMBNAILS"] = "1" if on else "0"
        with matchdb_server(env) as server:
            headers = {"Authorization": f"Token {BOOTSTRAP}", "content-type": "application/json"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=300) as client:
                assert client.post("/v2/collections", json={"name": "bench"}).status_code == 200
                # one small insert first, so the hashing kernels are warm before the clock starts
                warm = {"records": [{"_id": "warm", "_base64": base64.b64encode(images[0]).decode()}]}
                assert client.post("/v2/insert", json=warm, headers={"collection-id": "bench"}).status_code == 200

                def send(body: bytes) -> None:
                    answer = client.post("/v2/insert", content=body, headers={"collection-id": "bench"})
                    if answer.status_code != 200 or answer.json()["status"]["code"] != 200:
                        raise RuntimeError(answer.text[:300])

                group = server.process.pid  # the server runs in its own process group
                cpu_before, started = group_cpu_seconds(group), time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(send, bodies))
                seconds = time.perf_counter() - started
                cpu = group_cpu_seconds(group) - cpu_before
        return {
            "thumbnails": on,
            "records_per_s": len(images) / seconds,
            "server_cpu_ms_per_record": 1000 * cpu / len(images),
            **stored_bytes(url, path),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--postgres", action="store_true", help="insert into Postgres (MATCHDB_TEST_DATABASE_URL)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    photos = images_of(args.corpus, "photos")
    result: dict[str, Any] = {"machine": machine_facts(), "args": {k: str(v) for k, v in vars(args).items()}}
    result["cpu"] = {folder: cpu_per_image(images_of(args.corpus, folder), args.repeats) for folder in FOLDERS}
    print(json.dumps(result["cpu"], indent=1), flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-thumbnails-") as tmp:
        for round_number in range(args.rounds):
            for on in (True, False) if round_number % 2 == 0 else (False, True):
                run = insert_run(photos, on, args, Path(tmp), f"r{round_number}-{int(on)}")
                print(json.dumps(run), flush=True)
                runs.append(run)
    result["inserts"] = runs
    with_rate = statistics.median(r["records_per_s"] for r in runs if r["thumbnails"])
    without_rate = statistics.median(r["records_per_s"] for r in runs if not r["thumbnails"])
    grew = statistics.median(r["on_disk_bytes"] for r in runs if r["thumbnails"]) - statistics.median(
        r["on_disk_bytes"] for r in runs if not r["thumbnails"]
    )
    cpu_with = statistics.median(r["server_cpu_ms_per_record"] for r in runs if r["thumbnails"])
    cpu_without = statistics.median(r["server_cpu_ms_per_record"] for r in runs if not r["thumbnails"])
    result["summary"] = {
        "server_cpu_ms_per_record_with": cpu_with,
        "server_cpu_ms_per_record_without": cpu_without,
        "records": len(photos),
        "records_per_s_with": with_rate,
        "records_per_s_without": without_rate,
        "throughput_ratio": with_rate / without_rate,
        "thumbnail_mean_bytes": statistics.mean(r["mean_bytes"] for r in runs if r["thumbnails"]),
        "on_disk_bytes_per_record": grew / (len(photos) + 1),  # + 1: the warm-up record
    }
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
