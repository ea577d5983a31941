"""Index segments on a real database (SQLite and Postgres, through the real migrations) and real files: written,
mapped and caught up; every kind of bad file (flipped byte, truncated, foreign version, another database, stale
after prune-changes) rebuilt from the database and never served; rebuild requests, deletes, compaction under
concurrent writes (answers checked against a scan of the stored hashes) and a full disk (a real 64 KiB tmpfs)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import Engine

from matchdb.index import NumpyTreeIndex, tuning
from matchdb.index.segment import MAGIC, SegmentHeader, SegmentInvalid, map_segment, read_header, write_segment
from matchdb.service.indexes import CollectionIndex, IndexRegistry
from matchdb.service.segments import SegmentStore, database_identity
from matchdb.storage.changes import append_change, prune_changes
from matchdb.storage.collections import delete_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.hash_load import load_hashes
from matchdb.storage.records import NewRecord, delete_records, upsert_records
from tests.conftest import fresh_postgres_database
from tests.servers import matchdb_server, run_matchdb
from tests.test_index_registry import fill, random_bmh1


def store_for(engine: Engine, folder: Path) -> SegmentStore:
    return SegmentStore(folder, database_identity(engine))


def scan_nearest(engine: Engine, collection_id: str, kind: str, query: bytes, k: int) -> list[tuple[int, int]]:
    """The k nearest (bits, row id) by brute force over the hashes stored now: the truth every answer must equal."""
    with engine.connect() as connection:
        stored = load_hashes(connection, collection_id)
    packed = stored.bmh1 if kind == "bmh1" else stored.phash
    bits = np.unpackbits(packed ^ np.frombuffer(query, np.uint8), axis=1).sum(axis=1)
    order = np.lexsort((stored.keys, bits))[:k]
    return [(int(bits[i]), int(stored.keys[i])) for i in order]


def assert_answers_equal_scan(engine: Engine, collection_id: str, loaded: CollectionIndex, seed: int = 0) -> None:
    rng = random.Random(seed)
    for kind, nbytes in (("bmh1", 121), ("phash", 8)):
        for _ in range(5):
            query = bytearray(random_bmh1(rng) if kind == "bmh1" else rng.randbytes(nbytes))
            found = [(h.bits, h.key) for h in loaded.by_kind[kind].nearest(int.from_bytes(query, "little"), 5)]
            assert found == scan_nearest(engine, collection_id, kind, bytes(query), 5)


def mapped_from_file(loaded: CollectionIndex) -> bool:
    """Whether the trees' largest arrays are views of the segment's mapping (not heap copies)."""
    index = loaded.by_kind["bmh1"]
    assert isinstance(index, NumpyTreeIndex) and loaded.segment is not None
    return index.tree.words.base is not None and not index.tree.words.flags.writeable


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "index"


# --- the file format ----------------------------------------------------------------------------------------------


def built(n: int = 20_000, seed: int = 0) -> tuple[NumpyTreeIndex, NumpyTreeIndex, np.ndarray]:
    rng = np.random.default_rng(seed)
    keys = np.arange(1, n + 1, dtype=np.int64)
    bmh1 = rng.integers(0, 256, (n, 121), dtype=np.uint8)
    bmh1[:, -1] &= 1
    long, short = NumpyTreeIndex(961), NumpyTreeIndex(64)
    long.bulk_load_packed(keys, bmh1)
    short.bulk_load_packed(keys, rng.integers(0, 256, (n, 8), dtype=np.uint8))
    return long, short, bmh1


def test_a_segment_maps_read_only_and_answers_as_the_heap_tree(tmp_path: Path) -> None:
    long, short, bmh1 = built()
    path = tmp_path / "c.1.seg"
    header = SegmentHeader("db", "c", 1, 42, 20_000)
    write_segment(path, header, {"bmh1": long.tree, "phash": short.tree}, long.tree.sorted_keys)
    assert read_header(path) == header
    mapped = map_segment(path, "db", "c")
    assert mapped.header == header
    assert mapped.row_ids.tolist() == list(range(1, 20_001))
    for kind, heap in (("bmh1", long), ("phash", short)):
        index = NumpyTreeIndex(heap.nbits)
        index.load_tree(mapped.trees[kind])
        assert not index.tree.words.flags.writeable
        rng = random.Random(1)
        for i in range(10):
            query = int.from_bytes(bmh1[i * 97].tobytes(), "little") if kind == "bmh1" else rng.getrandbits(64)
            query ^= 1 << rng.randrange(heap.nbits)
            assert index.nearest(query, 10) == heap.nearest(query, 10)
            assert index.search(query, heap.nbits // 5) == heap.search(query, heap.nbits // 5)
        index.remove(3)  # tombstones and delta are the process's own: the file is never written
        index.add(10**9, 5)
        assert index.nearest(5, 1)[0].key == 10**9 and 3 not in {h.key for h in index.nearest(0, 30_000)}


def write_small(tmp_path: Path) -> Path:
    long, short, _ = built(3000)
    path = tmp_path / "c.1.seg"
    write_segment(path, SegmentHeader("db", "c", 1, 1, 3000), {"bmh1": long.tree, "phash": short.tree}, long.tree.keys)
    return path


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_flipped_bytes_anywhere_are_detected(tmp_path: Path) -> None:
    path = write_small(tmp_path)
    size = path.stat().st_size
    rng = random.Random(0)
    for offset in [20, 40, 200, size - 1, *(rng.randrange(size) for _ in range(40))]:
        copy = tmp_path / "copy.seg"
        shutil.copy(path, copy)
        flip(copy, offset)
        try:
            map_segment(copy, "db", "c")
        except SegmentInvalid:
            continue
        # a flip in alignment padding changes nothing that is read: the arrays must be intact then
        mapped = map_segment(copy, "db", "c")
        assert mapped.trees["bmh1"].size == 3000, offset


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncate", "truncated"),
        ("extend", "truncated or extended"),
        ("empty", "truncated"),
        ("version", "format version 2"),
        ("magic", "not a matchdb segment"),
        ("database", "another database"),
        ("data", "XXH3-64 checksum"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, damage: str, reason: str) -> None:
    path = write_small(tmp_path)
    database = "db"
    if damage == "truncate":
        os.truncate(path, path.stat().st_size - 100)
    elif damage == "extend":
        with open(path, "ab") as handle:
            handle.write(b"\0")
    elif damage == "empty":
        os.truncate(path, 0)
    elif damage == "version":
        with open(path, "r+b") as handle:
            handle.seek(len(MAGIC))
            handle.write(struct.pack("<I", 2))
    elif damage == "magic":
        flip(path, 0)
    elif damage == "database":
        database = "another"
    else:
        flip(path, array_offset(path, "phash.sorted_pos") + 1)
    with pytest.raises(SegmentInvalid, match=reason):
        map_segment(path, database, "c")


# --- the registry: start-up, staleness, corruption --------------------------------------------------------------


def test_a_second_process_maps_the_segment_and_catches_up(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 3000, seed=3)
    first = IndexRegistry(engine, segments=store_for(engine, folder))
    loaded = first.get(collection_id, wait=120)
    assert [p.name for _, p in first.segments.generations(collection_id)] == [f"{collection_id}.1.seg"]  # type: ignore[union-attr]
    assert mapped_from_file(loaded)  # the builder serves the file too: its heap copy is gone
    with engine.begin() as connection:  # changes after the segment's position
        delete_records(connection, collection_id, ["r1", "r2", "r3"])
        upsert_records(connection, collection_id, [NewRecord("new", {}, None, 1, 1, "x", bytes(121), bytes(8))])
    second = IndexRegistry(make_engine(database_url), segments=store_for(engine, folder))
    again = second.get(collection_id, wait=120)
    assert mapped_from_file(again) and again.segment is not None and again.segment.header.generation == 1
    assert again.size == 2998 and len(again.row_ids.snapshot()) == 2998
    assert again.by_kind["bmh1"].nearest(0, 1)[0].bits == 0
    assert_answers_equal_scan(engine, collection_id, again)
    assert len(first.segments.generations(collection_id)) == 1  # type: ignore[union-attr]


def array_offset(path: Path, name: str) -> int:
    """Where an array's bytes start in the file (from the header)."""
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, len(MAGIC) + 4)[0]
    meta = json.loads(data[32 : 32 + length])
    [entry] = [e for e in meta["arrays"] if e["name"] == name]
    return int(meta["data_start"]) + int(entry["offset"])


def corrupt_data(path: Path) -> None:
    flip(path, array_offset(path, "bmh1.blocks.entries") + 5)


@pytest.mark.parametrize("damage", ["flip", "truncate", "other-database"])
def test_bad_segments_are_rebuilt_from_the_database(
    database_url: str, folder: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 2000, seed=4)
    IndexRegistry(engine, segments=store_for(engine, folder)).get(collection_id, wait=120)
    [(_, path)] = store_for(engine, folder).generations(collection_id)
    with engine.begin() as connection:
        delete_records(connection, collection_id, ["r5"])
    store = store_for(engine, folder)
    if damage == "flip":
        corrupt_data(path)
    elif damage == "truncate":
        os.truncate(path, path.stat().st_size // 2)
    else:
        store = SegmentStore(folder, "postgresql:another:1:test")
    with caplog.at_level(logging.WARNING, logger="matchdb.index"):
        loaded = IndexRegistry(engine, segments=store).get(collection_id, wait=120)
    assert "not used" in caplog.text
    assert loaded.size == 1999 and mapped_from_file(loaded)
    assert [g for g, _ in store.generations(collection_id)] == [2]  # rebuilt and written again
    assert_answers_equal_scan(engine, collection_id, loaded, seed=4)


def test_prune_changes_past_a_segment_makes_it_stale(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 2000, seed=5)
    IndexRegistry(engine, segments=store_for(engine, folder)).get(collection_id, wait=120)
    with engine.begin() as connection:
        delete_records(connection, collection_id, ["r1", "r2"])
    with engine.begin() as connection:
        assert prune_changes(connection, datetime.now(UTC) + timedelta(seconds=1))[0] > 0
    # The segment alone would still hold r1 and r2, and the log no longer says they went: never served.
    loaded = IndexRegistry(engine, segments=store_for(engine, folder)).get(collection_id, wait=120)
    assert loaded.size == 1998 and loaded.segment is not None and loaded.segment.header.generation == 2
    assert_answers_equal_scan(engine, collection_id, loaded, seed=5)


def test_a_running_process_that_missed_pruned_changes_reloads_from_a_fresh_segment(
    database_url: str, folder: Path
) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 1000, seed=6)
    registry = IndexRegistry(engine, segments=store_for(engine, folder))
    registry.get(collection_id, wait=120)
    with engine.begin() as connection:
        delete_records(connection, collection_id, ["r1"])
    with engine.begin() as connection:
        prune_changes(connection, datetime.now(UTC) + timedelta(seconds=1))
    registry.catch_up()  # sees the marker: every index reloads
    loaded = registry.get(collection_id, wait=120)
    assert loaded.size == 999
    assert_answers_equal_scan(engine, collection_id, loaded, seed=6)


def test_a_rebuild_request_writes_a_new_generation(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 1000, seed=7)
    registry = IndexRegistry(engine, segments=store_for(engine, folder))
    registry.get(collection_id, wait=120)
    with engine.begin() as connection:
        seq = append_change(connection, collection_id, "rebuild")
    registry.catch_up()
    deadline = 600
    while registry.generation < seq and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    loaded = registry.get(collection_id)
    assert loaded.segment is not None and loaded.segment.header.generation == 2
    assert [g for g, _ in registry.segments.generations(collection_id)] == [2]  # type: ignore[union-attr]
    # A later process maps generation 2: it covers the request.
    again = IndexRegistry(engine, segments=store_for(engine, folder)).get(collection_id, wait=120)
    assert again.segment is not None and again.segment.header.generation == 2


def test_deleting_a_collection_removes_its_files(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 500, seed=8)
    kept, _ = fill(engine, 100, seed=9)
    registry = IndexRegistry(engine, segments=store_for(engine, folder))
    registry.get(collection_id, wait=120)
    registry.get(kept, wait=120)
    with engine.begin() as connection:
        assert delete_collection(connection, collection_id)
    registry.catch_up()
    assert not list(folder.glob(f"{collection_id}.*")) and list(folder.glob(f"{kept}.*.seg"))
    # Files of a collection deleted while no server ran go at the next start.
    orphan = folder / f"{uuid.uuid4()}.1.seg"
    shutil.copy(next(folder.glob(f"{kept}.*.seg")), orphan)
    IndexRegistry(engine, segments=store_for(engine, folder)).load_all_in_background().join(120)
    assert not orphan.exists() and list(folder.glob(f"{kept}.*.seg"))


def test_one_process_builds_while_the_others_wait(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 3000, seed=10)
    registries = [IndexRegistry(make_engine(database_url), segments=store_for(engine, folder)) for _ in range(3)]
    results: list[CollectionIndex] = []
    threads = [threading.Thread(target=lambda r=r: results.append(r.get(collection_id, wait=120))) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [g for g, _ in store_for(engine, folder).generations(collection_id)] == [1]  # built once
    assert all(loaded.segment is not None and loaded.segment.header.generation == 1 for loaded in results)


# --- compaction, full disk --------------------------------------------------------------------------------------


@pytest.fixture
def small_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "DELTA_MIN", 50)
    monkeypatch.setattr(tuning, "DELTA_SHARE", 0.02)


@pytest.mark.usefixtures("small_delta")
def test_compaction_under_concurrent_writes(database_url: str, folder: Path) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 2000, seed=11)
    registries = [IndexRegistry(make_engine(database_url), segments=store_for(engine, folder)) for _ in range(2)]
    for registry in registries:
        registry.get(collection_id, wait=120)
    rng = random.Random(1)
    seen_compacting = False
    for i in range(30):  # writes go on while compactions build in the background; after each, every answer is checked
        with engine.begin() as connection:
            batch = [NewRecord(f"w{i}-{j}", {}, None, 1, 1, "x", random_bmh1(rng), rng.randbytes(8)) for j in range(20)]
            upsert_records(connection, collection_id, batch)
            delete_records(connection, collection_id, [f"r{i * 10 + j}" for j in range(5)])
        for registry in registries:
            loaded = registry.get(collection_id, wait=120)
            seen_compacting |= loaded.compacting
            assert_answers_equal_scan(engine, collection_id, loaded, seed=i)
    assert seen_compacting
    for registry in registries:
        for _ in range(400):  # the compaction runs in the background: wait for its swap
            loaded = registry.get(collection_id, wait=120)
            if loaded.segment is not None and loaded.segment.header.generation > 1 and not loaded.compacting:
                break
            threading.Event().wait(0.05)
        assert loaded.segment is not None and loaded.segment.header.generation > 1
        assert loaded.size == 2000 + 600 - 150
        assert_answers_equal_scan(engine, collection_id, loaded, seed=99)
    generations = store_for(engine, folder).generations(collection_id)
    assert len(generations) == 1  # the older ones are unlinked


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a segment never fits (needs root; skipped where mounting is not allowed)."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_serves_from_memory_with_a_warning(
    database_url: str, tiny_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 2000, seed=12)
    with caplog.at_level(logging.WARNING, logger="matchdb.index"):
        loaded = IndexRegistry(engine, segments=store_for(engine, tiny_folder)).get(collection_id, wait=120)
    assert loaded.state == "ready" and loaded.segment is None and loaded.size == 2000
    assert "not written" in caplog.text and "No space left" in caplog.text
    assert not list(tiny_folder.glob("*.seg")) and not list(tiny_folder.glob(".*.tmp"))
    assert_answers_equal_scan(engine, collection_id, loaded, seed=12)


# --- real servers -------------------------------------------------------------------------------------------------


def segment_mappings(pid: int) -> dict[str, int]:
    """Per /proc/<pid>/smaps: the kB of this process's resident pages that are segment files' (file-backed, by
    construction of smaps) and shared with another process, and its anonymous kB overall."""
    found = {"seg_rss": 0, "seg_shared": 0, "anonymous": 0}
    in_segment = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's first line: range perms offset dev inode path
            in_segment = len(parts) >= 6 and parts[5].endswith(".seg")
        elif parts[0] == "Rss:" and in_segment:
            found["seg_rss"] += int(parts[1])
        elif parts[0] in ("Shared_Clean:", "Shared_Dirty:") and in_segment:
            found["seg_shared"] += int(parts[1])
        elif parts[0] == "Anonymous:":
            found["anonymous"] += int(parts[1])
    return found


@pytest.mark.postgres
def test_two_workers_of_one_serve_share_one_mapped_file(postgres_server_url: str, tmp_path: Path) -> None:
    url, drop = fresh_postgres_database(postgres_server_url)
    try:
        engine = make_engine(url)
        upgrade(engine)
        collection_id, hashes = fill(engine, 40_000, seed=13)
        folder = tmp_path / "index"
        env = {"MATCHDB_DATABASE_URL": url, "MATCHDB_INDEX_FOLDER": str(folder)}
        with matchdb_server(env, workers=2) as server:
            pid = server.process.pid
            children = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # (a child may be a helper that maps nothing: the workers do)
                seen = [m for m in map(segment_mappings, children) if m["seg_rss"]]
                if len(seen) == 2 and all(m["seg_shared"] > 0 for m in seen):
                    break
                time.sleep(0.2)
            assert len(seen) == 2
            [(generation, path)] = store_for(engine, folder).generations(collection_id)
            size_kb = path.stat().st_size // 1024
            for mapping in seen:  # each worker reads the whole file (the checksum pass) from the one page-cache copy
                assert mapping["seg_rss"] >= size_kb * 0.9 and mapping["seg_shared"] >= size_kb * 0.9, (
                    mapping,
                    size_kb,
                )
            assert generation == 1  # built once, by one worker; the other waited and mapped it
            response = httpx.post(
                f"{server.url}/v2/visualKNN",
                json={"query_record": {"_id": "r7"}, "k": 3},
                headers={"collection-id": collection_id},
                timeout=30,
            ).json()
            assert response["status"]["code"] == 200  # the query record itself excluded: the scan's first
            expected = scan_nearest(engine, collection_id, "bmh1", hashes["r7"][0], 4)[1:]
            assert response["answer_hamming"] == [bits for bits, _ in expected]
    finally:
        drop()


def test_rebuild_index_with_no_server_writes_the_next_generation(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    collection_id, _ = fill(engine, 500, seed=14)
    folder = tmp_path / "index"
    env = {"MATCHDB_DATABASE_URL": url, "MATCHDB_INDEX_FOLDER": str(folder)}
    for generation in (1, 2):
        done = run_matchdb(["rebuild-index", "--collection", collection_id], env, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"segment generation {generation} written" in done.stdout
        assert [g for g, _ in store_for(engine, folder).generations(collection_id)] == [generation]
