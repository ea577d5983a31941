"""Attacking a real server (tests/test_hostile.py, benchmarks/bench_hostile.py): a collection seeded directly in its
database, flood bodies, and :func:`watched`, which samples the server's resident memory (its whole process group,
from /proc) and ``/healthz``'s latency every 50 ms while an attack runs. Everything stays on 127.0.0.1."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from matchdb.storage.collections import create_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import NewRecord, upsert_records

MIB = 1024 * 1024
FLOOD_BYTES = 64 * MIB - 1024  # just under the default MATCHDB_MAX_BODY_BYTES


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in the process group ``pgid`` (the server and its workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ProcessLookupError):
            continue
    return total


@contextmanager
def watched(url: str, pgid: int) -> Iterator[dict[str, float]]:
    """While the block runs: the worst ``/healthz`` latency (s) and the peak RSS (bytes), in the yielded dict."""
    out = {"rss_before": float(group_rss(pgid)), "rss_peak": 0.0, "healthz_worst": 0.0, "healthz_failed": 0.0}
    out["healthz_answered"] = 0.0
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                try:
                    client.get(f"{url}/healthz").raise_for_status()
                    out["healthz_answered"] += 1
                except httpx.HTTPError:
                    out["healthz_failed"] += 1
                out["healthz_worst"] = max(out["healthz_worst"], time.perf_counter() - started)
                done.wait(0.05)

    def sample() -> None:
        while not done.is_set():
            out["rss_peak"] = max(out["rss_peak"], float(group_rss(pgid)))
            done.wait(0.05)

    threads = [threading.Thread(target=probe), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    try:
        yield out
    finally:
        done.set()
        for thread in threads:
            thread.join()
        out["rss_after"] = float(group_rss(pgid))


def random_hash(bits: int) -> bytes:
    return random.getrandbits(bits).to_bytes((bits + 7) // 8, "little")


def seed(database_url: str, records: int, name: str = "hostile", padding: int = 0) -> str:
    """A collection ``name`` of workspace ``default`` holding ``records`` records ``r0``, ``r1``, ... (random
    hashes, attribute ``shard`` = i % 16, and ``pad``: ``padding`` characters), stored directly; returns its id."""
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.begin() as connection:
        collection = create_collection(connection, "default", name).id
    extra = {"pad": "p" * padding} if padding else {}
    for start in range(0, records, 5000):
        batch = [
            NewRecord(f"r{i}", {"shard": i % 16, **extra}, None, 8, 8, f"c{i}", random_hash(961), random_hash(64))
            for i in range(start, min(start + 5000, records))
        ]
        with engine.begin() as connection:
            upsert_records(connection, collection, batch)
    engine.dispose()
    return collection


def flood(prefix: bytes, item: bytes, suffix: bytes, size: int = FLOOD_BYTES) -> bytes:
    count = (size - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix
