"""``matchdb rebuild-index``: ask every running server to rebuild its indexes and wait for them, or, with no
server running, build the indexes offline and check them against a brute-force scan (nothing is persisted)."""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine

from matchdb.hashing import HASH_TYPES, NBITS
from matchdb.service.indexes import IndexRegistry
from matchdb.service.segments import SegmentStore
from matchdb.storage.changes import append_change
from matchdb.storage.records import stream_hashes
from matchdb.storage.servers import ServerInfo, live_servers


@dataclass(frozen=True)
class OnlineResult:
    seq: int
    servers: list[ServerInfo]  # as they last reported
    done: bool  # every server reached the generation in time
    waited: float


@dataclass(frozen=True)
class OfflineResult:
    collection_id: str
    records: int
    build_seconds: float
    memory_bytes: int
    checked_queries: int
    mismatches: int
    segment_generation: int | None = None  # the generation written to the index folder (None: segments off)


def request_rebuild(engine: Engine, target: str) -> int:
    """Record a rebuild request (``target`` a collection id or ``*``) in the change log; returns its seq."""
    with engine.begin() as connection:
        return append_change(connection, target, "rebuild")


def wait_for_servers(
    engine: Engine, seq: int, fresh_within: float, timeout: float, on_progress: Callable[[int, int], None]
) -> OnlineResult:
    """Wait until every server with a fresh heartbeat serves generation >= ``seq``."""
    started = time.monotonic()
    while True:
        with engine.connect() as connection:
            servers = live_servers(connection, fresh_within)
        done = sum(server.generation >= seq for server in servers)
        on_progress(done, len(servers))
        if done == len(servers) or time.monotonic() - started > timeout:
            return OnlineResult(seq, servers, done == len(servers), time.monotonic() - started)
        time.sleep(0.25)


def running_servers(engine: Engine, fresh_within: float) -> list[ServerInfo]:
    with engine.connect() as connection:
        return live_servers(connection, fresh_within)


def offline_rebuild(
    engine: Engine, collection_id: str, sample: int = 100, seed: int = 0, segments: SegmentStore | None = None
) -> OfflineResult:
    """Build the collection's indexes from the database as a server would, time it, measure its memory, and check
    ``sample`` k-nearest queries per hash type against a brute-force numpy scan of the stored hashes. With
    ``segments`` the build writes the collection's next segment generation (a rebuild request in the change log
    first makes the current one stale), which the next server start maps; the memory is then the heap the
    process keeps besides the mapping."""
    if segments is not None:
        request_rebuild(engine, collection_id)
    tracemalloc.start()
    started = time.perf_counter()
    loaded = IndexRegistry(engine, segments=segments).get(collection_id, wait=3600)
    build_seconds = time.perf_counter() - started
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    stored: dict[str, list[tuple[int, bytes]]] = {kind: [] for kind in HASH_TYPES}
    with engine.connect() as connection:
        for rows in stream_hashes(connection, collection_id):
            for row_id, bmh1, phash in rows:
                stored["bmh1"].append((row_id, bmh1))
                stored["phash"].append((row_id, phash))
    rng = random.Random(seed)
    checked = mismatches = 0
    for kind in HASH_TYPES:
        items = stored[kind]
        if not items:
            continue
        keys = np.array([key for key, _ in items], dtype=np.int64)
        packed = np.frombuffer(b"".join(value for _, value in items), dtype=np.uint8).reshape(len(items), -1)
        index = loaded.by_kind[kind]
        for _ in range(min(sample, len(items))):
            query = bytearray(rng.choice(items)[1])
            for _ in range(rng.randrange(0, 6)):
                bit = rng.randrange(NBITS[kind])
                query[bit // 8] ^= 1 << (bit % 8)
            distances = np.unpackbits(packed ^ np.frombuffer(bytes(query), dtype=np.uint8), axis=1).sum(axis=1)
            order = np.lexsort((keys, distances))[:10]
            expected = [(int(distances[i]), int(keys[i])) for i in order]
            found = [(hit.bits, hit.key) for hit in index.nearest(int.from_bytes(query, "little"), 10)]
            checked += 1
            mismatches += found != expected
    generation = loaded.segment.header.generation if loaded.segment is not None else None
    return OfflineResult(collection_id, loaded.size, build_seconds, memory, checked, mismatches, generation)
