"""The per-process index registry on a real database: loading states, waiting, catch-up from the change log."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from sqlalchemy import Engine

from matchdb.service.indexes import IndexLoading, IndexRegistry
from matchdb.storage.collections import create_collection
from matchdb.storage.database import make_engine, upgrade
from matchdb.storage.records import NewRecord, delete_records, upsert_records


def random_bmh1(rng: random.Random) -> bytes:
    """961 random bits, packed: the last byte holds only bit 960, as in a real bmh1 hash."""
    return rng.randbytes(120) + bytes([rng.getrandbits(1)])


def fill(engine: Engine, count: int, seed: int = 0) -> tuple[str, dict[str, tuple[bytes, bytes]]]:
    rng = random.Random(seed)
    hashes = {f"r{i}": (random_bmh1(rng), rng.randbytes(8)) for i in range(count)}
    with engine.begin() as connection:
        collection = create_collection(connection, "default", f"c{seed}")
        batch = [NewRecord(ext, {}, None, 1, 1, "x", b, p) for ext, (b, p) in hashes.items()]
        for start in range(0, len(batch), 5000):
            upsert_records(connection, collection.id, batch[start : start + 5000])
    return collection.id, hashes


def test_a_query_waits_for_loading_then_gets_the_index(database_url: str) -> None:
    engine = make_engine(database_url)
    collection_id, hashes = fill(engine, 20_000)
    registry = IndexRegistry(engine)
    with pytest.raises(IndexLoading, match="still loading"):
        registry.get(collection_id, wait=0)
    assert registry.states()[collection_id].state == "loading"
    loaded = registry.get(collection_id, wait=60)
    assert loaded.state == "ready" and loaded.size == 20_000
    query = int.from_bytes(hashes["r7"][1], "little")
    assert loaded.by_kind["phash"].nearest(query, 1)[0].bits == 0


def test_changes_from_another_writer_are_seen_at_the_next_query(database_url: str) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 50, seed=1)
    registry = IndexRegistry(engine)
    assert registry.get(collection_id).size == 50
    other = make_engine(database_url)  # another process's writes, through another engine
    with other.begin() as connection:
        delete_records(connection, collection_id, ["r1", "r2"])
        upsert_records(connection, collection_id, [NewRecord("new", {}, None, 1, 1, "x", bytes(121), bytes(8))])
    loaded = registry.get(collection_id)
    assert loaded.size == 49
    assert loaded.by_kind["bmh1"].nearest(0, 1)[0].bits == 0
    assert registry.catch_up() == 0  # idle: nothing more to apply


def test_load_all_at_start(database_url: str) -> None:
    engine = make_engine(database_url)
    first, _ = fill(engine, 30, seed=2)
    second, _ = fill(engine, 40, seed=3)
    registry = IndexRegistry(engine)
    registry.load_all_in_background().join(timeout=60)
    states = registry.states()
    assert {states[first].size, states[second].size} == {30, 40}
    assert all(state.state == "ready" for state in states.values())


def test_writes_during_a_rebuild_reach_the_new_indexes(database_url: str) -> None:
    import time

    from matchdb.storage.changes import append_change

    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 20_000, seed=4)
    registry = IndexRegistry(engine)
    old = registry.get(collection_id, wait=60)
    with engine.begin() as connection:
        seq = append_change(connection, collection_id, "rebuild")
    registry.catch_up()  # starts the rebuild in the background
    with engine.begin() as connection:  # lands while the new indexes load (or just after: both must work)
        delete_records(connection, collection_id, ["r5"])
        upsert_records(connection, collection_id, [NewRecord("late", {}, None, 1, 1, "x", bytes(121), bytes(8))])
    registry.catch_up()
    deadline = time.monotonic() + 60
    while registry.generation < seq and time.monotonic() < deadline:
        time.sleep(0.05)
        registry.catch_up()
    new = registry.get(collection_id)
    assert new is not old and registry.generation >= seq
    assert new.size == 20_000  # one deleted, one added
    assert new.by_kind["bmh1"].nearest(0, 1)[0].bits == 0  # "late" (all-zero hash) is in
    with engine.connect() as connection:
        from matchdb.storage.records import ids_by_ext_id

        assert ids_by_ext_id(connection, collection_id, ["r5"]) == {}


def test_catch_up_survives_losing_its_connection(database_url: str) -> None:
    """Catch-up keeps one connection; if the database drops it (restart, idle timeout), the next query reconnects
    and still sees every write."""
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 10, seed=7)
    registry = IndexRegistry(engine)
    assert registry.get(collection_id).size == 10
    watch = registry._watch
    assert watch is not None
    if engine.dialect.name == "postgresql":
        pid = watch.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    else:
        watch.connection.driver_connection.close()  # type: ignore[union-attr]
    with engine.begin() as connection:
        upsert_records(connection, collection_id, [NewRecord("late", {}, None, 1, 1, "x", bytes(121), bytes(8))])
    assert registry.get(collection_id).size == 11
    assert registry._watch is not None and registry._watch is not watch
    registry.close()


def test_pruning_the_change_log(database_url: str) -> None:
    """Old entries go; a server that had applied them keeps its indexes; one that had not reloads, and then
    answers with every write (nothing lost to the prune)."""
    from datetime import UTC, datetime, timedelta

    from matchdb.storage.changes import PRUNED, changes_since, prune_changes

    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 30, seed=8)
    current, lagging = IndexRegistry(engine), IndexRegistry(engine)
    assert current.get(collection_id).size == lagging.get(collection_id).size == 30
    other = make_engine(database_url)
    with other.begin() as connection:  # written while ``lagging`` is frozen (no catch-up)
        upsert_records(connection, collection_id, [NewRecord("late", {}, None, 1, 1, "x", bytes(121), bytes(8))])
        delete_records(connection, collection_id, ["r3"])
    assert current.get(collection_id).size == 30  # applied: one in, one out
    before = current.get(collection_id)

    with other.begin() as connection:
        assert prune_changes(connection, datetime.now(UTC) - timedelta(hours=1)) == (0, 0)  # nothing that old
        deleted, upto = prune_changes(connection, datetime.now(UTC) + timedelta(seconds=5))
    assert deleted >= 32 and upto > 0
    with other.connect() as connection:
        assert [(c.op, c.record_id) for c in changes_since(connection, 0)] == [(PRUNED, upto)]

    assert current.get(collection_id) is before  # it had seen everything: no reload
    reloaded = lagging.get(collection_id, wait=60)
    assert reloaded.size == 30
    assert reloaded.by_kind["bmh1"].nearest(0, 1)[0].bits == 0  # the late record is there
    with other.begin() as connection:  # and catch-up goes on normally after the reload
        delete_records(connection, collection_id, ["late"])
    assert lagging.get(collection_id).size == 29 and current.get(collection_id).size == 29


def test_prune_changes_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from matchdb.cli.root import main

    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    engine = make_engine(url)
    upgrade(engine)
    fill(engine, 5, seed=9)
    result = CliRunner().invoke(main, ["db", "prune-changes"], env={"MATCHDB_DATABASE_URL": url})
    assert result.exit_code == 0 and result.output.strip() == "nothing to delete"  # all of them are recent
    bad = CliRunner().invoke(main, ["db", "prune-changes", "--keep-hours", "0"], env={"MATCHDB_DATABASE_URL": url})
    assert bad.exit_code == 2
