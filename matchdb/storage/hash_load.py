"""Read every hash of a collection into packed numpy arrays, fast: how a server loads its indexes.

Going through SQLAlchemy rows costs ~30 s per million records (a Python tuple, two ``bytes`` and a join per row).
On Postgres the rows are instead fetched with ``COPY ... TO STDOUT (FORMAT BINARY)``: every row has the same
layout (int8 id, 121-byte bmh1, 8-byte phash), so whole blocks of the stream are read as one numpy structured
array without a Python object per row (psycopg still hands over one block per row: that loop is the remaining
cost, ~2 s per million). SQLite (embedded, smaller collections) keeps the plain row path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql
from sqlalchemy.engine import Connection

from matchdb.hashing import NBITS
from matchdb.storage.records import stream_hashes

BMH1_BYTES = (NBITS["bmh1"] + 7) // 8
PHASH_BYTES = (NBITS["phash"] + 7) // 8
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_TRAILER = b"\xff\xff"
_PARSE_AT = 4 << 20  # parse the stream in blocks of about this many bytes


@dataclass(frozen=True)
class PackedHashes:
    """Row ids in insertion order and the matching packed (LSB-first) hashes, one row per record."""

    keys: npt.NDArray[np.int64]
    bmh1: npt.NDArray[np.uint8]
    phash: npt.NDArray[np.uint8]

    def __len__(self) -> int:
        return len(self.keys)


class LayoutError(ValueError):
    """A COPY row did not have the fixed layout (a NULL or a hash of another length): fall back to rows."""


def load_hashes(connection: Connection, collection_id: str) -> PackedHashes:
    """Every record's (row id, bmh1, phash) of the collection, ordered by row id."""
    if connection.dialect.name == "postgresql":
        try:
            return _copy_binary(connection, collection_id)
        except LayoutError:
            pass
    return _from_rows(connection, collection_id)


def _from_rows(connection: Connection, collection_id: str) -> PackedHashes:
    keys: list[int] = []
    bmh1: list[bytes] = []
    phash: list[bytes] = []
    for batch in stream_hashes(connection, collection_id):
        for row_id, first, second in batch:
            if len(first) != BMH1_BYTES or len(second) != PHASH_BYTES:
                raise ValueError(f"record row {row_id} holds hashes of the wrong length")
            keys.append(row_id)
            bmh1.append(first)
            phash.append(second)
    return PackedHashes(
        np.array(keys, np.int64),
        np.frombuffer(b"".join(bmh1), np.uint8).reshape(len(keys), BMH1_BYTES),
        np.frombuffer(b"".join(phash), np.uint8).reshape(len(keys), PHASH_BYTES),
    )


_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("id_len", ">i4"),
        ("id", ">i8"),
        ("bmh1_len", ">i4"),
        ("bmh1", np.uint8, (BMH1_BYTES,)),
        ("phash_len", ">i4"),
        ("phash", np.uint8, (PHASH_BYTES,)),
    ]
)


def _copy_binary(connection: Connection, collection_id: str) -> PackedHashes:
    raw: Any = connection.connection.driver_connection  # the psycopg connection, inside SQLAlchemy's transaction
    query = sql.SQL(
        "COPY (SELECT id, bmh1, phash FROM records WHERE collection_id = {}) TO STDOUT (FORMAT BINARY)"
    ).format(sql.Literal(collection_id))
    parts: list[np.ndarray] = []
    pending = bytearray()
    header = True
    with raw.cursor() as cursor, cursor.copy(query) as copy:
        for block in copy:
            pending += block
            if header:
                if len(pending) < len(_SIGNATURE) + 8:
                    continue
                if not pending.startswith(_SIGNATURE):
                    raise LayoutError("not a binary COPY stream")
                extension = int.from_bytes(pending[len(_SIGNATURE) + 4 : len(_SIGNATURE) + 8], "big")
                skip = len(_SIGNATURE) + 8 + extension
                if len(pending) < skip:
                    continue
                del pending[:skip]
                header = False
            if len(pending) >= _PARSE_AT:
                parts.append(_parse_rows(pending))
    if header or len(pending) < len(_TRAILER):
        raise LayoutError("binary COPY stream ended early")
    parts.append(_parse_rows(pending))
    if bytes(pending) != _TRAILER:
        raise LayoutError("binary COPY rows are not of the fixed layout")
    rows = np.concatenate(parts) if parts else np.empty(0, _ROW)
    order = np.argsort(rows["id"], kind="stable")  # sorting here is cheaper than Postgres's on-disk merge sort
    return PackedHashes(rows["id"][order].astype(np.int64), rows["bmh1"][order], rows["phash"][order])


def _parse_rows(pending: bytearray) -> np.ndarray:
    """Take every whole fixed-layout row off the front of ``pending`` (a copy: ``pending`` is reused)."""
    count = len(pending) // _ROW.itemsize  # the 2-byte trailer is shorter than a row: never taken as one
    rows = np.frombuffer(pending, _ROW, count=count).copy()
    del pending[: count * _ROW.itemsize]
    if count and not (
        (rows["fields"] == 3).all()
        and (rows["id_len"] == 8).all()
        and (rows["bmh1_len"] == BMH1_BYTES).all()
        and (rows["phash_len"] == PHASH_BYTES).all()
    ):
        raise LayoutError("binary COPY rows are not of the fixed layout")
    return rows
