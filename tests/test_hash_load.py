"""Loading a collection's hashes into packed arrays: the binary COPY path (Postgres) equals the plain row path."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import update

from matchdb.storage.database import make_engine
from matchdb.storage.hash_load import BMH1_BYTES, PHASH_BYTES, _copy_binary, _from_rows, load_hashes
from matchdb.storage.records import delete_records, stream_hashes
from matchdb.storage.schema import records
from tests.test_index_registry import fill


def test_load_equals_the_row_stream_in_row_id_order(database_url: str) -> None:
    engine = make_engine(database_url)
    collection_id, hashes = fill(engine, 3_000, seed=3)
    fill(engine, 500, seed=4)  # another collection's records are not loaded
    with engine.begin() as connection:
        delete_records(connection, collection_id, [f"r{i}" for i in range(0, 3_000, 7)])
    with engine.connect() as connection:
        loaded = load_hashes(connection, collection_id)
        rows = [row for batch in stream_hashes(connection, collection_id) for row in batch]
        if connection.dialect.name == "postgresql":  # the fast path itself, not a fallback, gives this answer
            copied = _copy_binary(connection, collection_id)
            assert np.array_equal(copied.keys, loaded.keys) and np.array_equal(copied.bmh1, loaded.bmh1)
            assert np.array_equal(copied.phash, loaded.phash)
    assert len(loaded) == len(rows) == 3_000 - len(range(0, 3_000, 7))
    assert loaded.keys.tolist() == [row[0] for row in rows]
    assert loaded.bmh1.shape == (len(rows), BMH1_BYTES) and loaded.phash.shape == (len(rows), PHASH_BYTES)
    assert [bytes(b) for b in loaded.bmh1] == [row[1] for row in rows]
    assert [bytes(p) for p in loaded.phash] == [row[2] for row in rows]
    assert {bytes(b) for b in loaded.bmh1} <= {b for b, _ in hashes.values()}


def test_empty_collection(database_url: str) -> None:
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 0, seed=5)
    with engine.connect() as connection:
        loaded = load_hashes(connection, collection_id)
    assert len(loaded) == 0 and loaded.bmh1.shape == (0, BMH1_BYTES) and loaded.keys.dtype == np.int64


def test_a_hash_of_the_wrong_length_is_an_error_not_a_misread(database_url: str) -> None:
    """The COPY path trusts a fixed row layout; a row that breaks it must send the load to the checked row path."""
    engine = make_engine(database_url)
    collection_id, _ = fill(engine, 40, seed=6)
    with engine.begin() as connection:
        connection.execute(update(records).where(records.c.ext_id == "r20").values(phash=b"\x01\x02\x03"))
    with engine.connect() as connection, pytest.raises(ValueError, match="wrong length"):
        load_hashes(connection, collection_id)
    with engine.connect() as connection, pytest.raises(ValueError, match="wrong length"):
        _from_rows(connection, collection_id)
