"""Geometric signatures of the records of geometric collections: written with their record's upsert (same
transaction), read by index loads and catch-ups; rows go away with their record (``ON DELETE CASCADE``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from matchdb.storage.schema import geometric_signatures, records

_CHUNK = 500


def replace_signatures(connection: Connection, signatures: Sequence[tuple[int, bytes]]) -> None:
    """Store each (row id, 304-byte signature), replacing the record's old one."""
    row_ids = [row_id for row_id, _ in signatures]
    for start in range(0, len(row_ids), _CHUNK):
        chunk = row_ids[start : start + _CHUNK]
        connection.execute(delete(geometric_signatures).where(geometric_signatures.c.record_id.in_(chunk)))
    if signatures:
        connection.execute(insert(geometric_signatures), [{"record_id": r, "data": d} for r, d in signatures])


def _words(blobs: Sequence[bytes]) -> npt.NDArray[np.uint64]:
    if not blobs:
        return np.zeros((0, 38), np.uint64)
    return np.frombuffer(b"".join(blobs), "<u8").astype(np.uint64).reshape(len(blobs), 38)


def load_signatures(connection: Connection, collection_id: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    """Every signature of the collection: (row ids, (n, 38) uint64)."""
    rows = connection.execute(
        select(geometric_signatures.c.record_id, geometric_signatures.c.data)
        .join(records, records.c.id == geometric_signatures.c.record_id)
        .where(records.c.collection_id == collection_id)
    ).all()
    return np.array([int(r[0]) for r in rows], np.int64), _words([bytes(r[1]) for r in rows])


def signatures_by_row_ids(connection: Connection, row_ids: Sequence[int]) -> dict[int, npt.NDArray[np.uint64]]:
    """The signatures of these records (those that have one)."""
    out: dict[int, npt.NDArray[np.uint64]] = {}
    for start in range(0, len(row_ids), _CHUNK):
        chunk = list(row_ids[start : start + _CHUNK])
        rows = connection.execute(
            select(geometric_signatures.c.record_id, geometric_signatures.c.data).where(
                geometric_signatures.c.record_id.in_(chunk)
            )
        ).all()
        for row_id, data in rows:
            out[int(row_id)] = _words([bytes(data)])[0]
    return out
