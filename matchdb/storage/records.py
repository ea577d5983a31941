"""Records of a collection: upsert in batches, delete, attribute updates, lookups, paging and hash streaming.

Each function runs inside the caller's transaction, so a batch is stored whole or not at all, together with its
change-log entries. Functions never commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from matchdb.hashing import ALGORITHM_VERSION
from matchdb.storage.changes import append_changes
from matchdb.storage.schema import records

HASH_VERSION = max(ALGORITHM_VERSION.values())


@dataclass(frozen=True)
class NewRecord:
    """A record to store: the caller's ``_id`` and attributes, the image facts and both hashes (packed bytes)."""

    ext_id: str
    attributes: dict[str, Any]
    source_url: str | None
    width: int
    height: int
    checksum: str
    bmh1: bytes
    phash: bytes


@dataclass(frozen=True)
class StoredRecord:
    row_id: int
    ext_id: str
    attributes: dict[str, Any]
    source_url: str | None
    width: int
    height: int
    checksum: str
    bmh1: bytes
    phash: bytes


_COLUMNS = (
    records.c.id,
    records.c.ext_id,
    records.c.attributes,
    records.c.source_url,
    records.c.width,
    records.c.height,
    records.c.checksum,
    records.c.bmh1,
    records.c.phash,
)


def _stored(row: Sequence[Any]) -> StoredRecord:
    return StoredRecord(row[0], row[1], dict(row[2]), row[3], row[4], row[5], row[6], bytes(row[7]), bytes(row[8]))


def upsert_records(connection: Connection, collection_id: str, batch: Sequence[NewRecord]) -> list[int]:
    """Store ``batch`` (``_id`` unique in it); an existing ``_id`` is replaced in place and keeps its row id
    (its insertion order). Returns the row ids in batch order."""
    if not batch:
        return []
    existing = ids_by_ext_id(connection, collection_id, [r.ext_id for r in batch])
    now = datetime.now(UTC)

    def values(r: NewRecord) -> dict[str, Any]:
        return {
            "collection_id": collection_id,
            "ext_id": r.ext_id,
            "attributes": r.attributes,
            "source_url": r.source_url,
            "width": r.width,
            "height": r.height,
            "checksum": r.checksum,
            "bmh1": r.bmh1,
            "phash": r.phash,
            "hash_version": HASH_VERSION,
            "updated_at": now,
        }

    updates = [{**values(r), "row_id": existing[r.ext_id]} for r in batch if r.ext_id in existing]
    if updates:
        connection.execute(
            update(records).where(records.c.id == bindparam("row_id")),
            [{k: v for k, v in u.items() if k != "collection_id"} for u in updates],
        )
    fresh = [values(r) for r in batch if r.ext_id not in existing]
    if fresh:
        connection.execute(insert(records), fresh)
        existing.update(ids_by_ext_id(connection, collection_id, [v["ext_id"] for v in fresh]))
    row_ids = [existing[r.ext_id] for r in batch]
    append_changes(connection, collection_id, "upsert", row_ids)
    return row_ids


_CHUNK = 500  # values per IN (...) list: well inside SQLite's and Postgres's parameter limits


def _by_ext_id(
    connection: Connection, collection_id: str, ext_ids: Sequence[str], *columns: Any
) -> Iterator[Sequence[Any]]:
    """Rows of ``columns`` for the records with these ``_id`` values, queried in chunks."""
    for start in range(0, len(ext_ids), _CHUNK):
        chunk = list(ext_ids[start : start + _CHUNK])
        yield from connection.execute(
            select(*columns).where(records.c.collection_id == collection_id, records.c.ext_id.in_(chunk))
        )


def ids_by_ext_id(connection: Connection, collection_id: str, ext_ids: Sequence[str]) -> dict[str, int]:
    rows = _by_ext_id(connection, collection_id, ext_ids, records.c.ext_id, records.c.id)
    return {ext: int(rid) for ext, rid in rows}


def checksums_by_ext_id(connection: Connection, collection_id: str, ext_ids: Sequence[str]) -> dict[str, str]:
    """Stored checksums, so a rerun of an ingest can skip records whose image did not change."""
    return {
        ext: checksum
        for ext, checksum in _by_ext_id(connection, collection_id, ext_ids, records.c.ext_id, records.c.checksum)
    }


def get_records(connection: Connection, collection_id: str, ext_ids: Sequence[str]) -> dict[str, StoredRecord]:
    return {row[1]: _stored(row) for row in _by_ext_id(connection, collection_id, ext_ids, *_COLUMNS)}


def get_by_row_ids(connection: Connection, row_ids: Sequence[int]) -> dict[int, StoredRecord]:
    out: dict[int, StoredRecord] = {}
    for start in range(0, len(row_ids), _CHUNK):
        rows = connection.execute(select(*_COLUMNS).where(records.c.id.in_(list(row_ids[start : start + _CHUNK]))))
        out.update({int(row[0]): _stored(row) for row in rows})
    return out


def delete_records(connection: Connection, collection_id: str, ext_ids: Sequence[str]) -> dict[str, int]:
    """Delete by ``_id``; returns the row ids of those that existed."""
    found = ids_by_ext_id(connection, collection_id, ext_ids)
    if found:
        ids = list(found.values())
        for start in range(0, len(ids), _CHUNK):
            connection.execute(delete(records).where(records.c.id.in_(ids[start : start + _CHUNK])))
        append_changes(connection, collection_id, "delete", ids)
    return found


def update_attributes(
    connection: Connection, collection_id: str, patches: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Merge each patch into the stored attributes (a ``None`` value removes the key); returns the new attributes
    of the records that exist. Hashes never change here."""
    current = get_records(connection, collection_id, list(patches))
    now = datetime.now(UTC)
    merged: dict[str, dict[str, Any]] = {}
    for ext_id, stored in current.items():
        attributes = dict(stored.attributes)
        for key, value in patches[ext_id].items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        merged[ext_id] = attributes
        connection.execute(
            update(records).where(records.c.id == stored.row_id).values(attributes=attributes, updated_at=now)
        )
    append_changes(connection, collection_id, "update", [current[e].row_id for e in merged])
    return merged


def page_ext_ids(connection: Connection, collection_id: str, page: int, page_size: int) -> tuple[list[str], int]:
    """One page of ``_id`` values in insertion order, and the total count."""
    count = int(
        connection.execute(
            select(func.count()).select_from(records).where(records.c.collection_id == collection_id)
        ).scalar_one()
    )
    rows = connection.execute(
        select(records.c.ext_id)
        .where(records.c.collection_id == collection_id)
        .order_by(records.c.id)
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return [row[0] for row in rows], count


def stream_hashes(connection: Connection, collection_id: str, batch: int = 50_000) -> Iterator[list[Any]]:
    """(row id, bmh1, phash) of every record in insertion order, in batches: how an index loads."""
    result = connection.execution_options(stream_results=True, yield_per=batch).execute(
        select(records.c.id, records.c.bmh1, records.c.phash)
        .where(records.c.collection_id == collection_id)
        .order_by(records.c.id)
    )
    for partition in result.partitions():
        yield list(partition)
