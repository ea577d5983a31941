"""Record thumbnails: written with their record's upsert (same transaction), read one at a time by the console.

Rows go away with their record (``ON DELETE CASCADE``), so deletes and collection drops need nothing here. Nothing
on the search or index-load path reads this table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from matchdb.hashing.thumbnail import MEDIA_TYPE
from matchdb.storage.schema import records, thumbnails

_CHUNK = 500


def replace_thumbnails(connection: Connection, pictures: Sequence[tuple[int, bytes | None]]) -> None:
    """Store each (row id, picture): a picture replaces the record's old one, ``None`` removes it (a record whose
    image changed while thumbnails were off must not keep showing its old image)."""
    row_ids = [row_id for row_id, _ in pictures]
    for start in range(0, len(row_ids), _CHUNK):
        connection.execute(delete(thumbnails).where(thumbnails.c.record_id.in_(row_ids[start : start + _CHUNK])))
    rows = [{"record_id": row_id, "media_type": MEDIA_TYPE, "data": data} for row_id, data in pictures if data]
    if rows:
        connection.execute(insert(thumbnails), rows)


@dataclass(frozen=True)
class Lookup:
    """A record's thumbnail as found: whether the record exists, and its picture if it has one."""

    record_exists: bool
    media_type: str = ""
    data: bytes | None = None


def get_thumbnail(connection: Connection, collection_id: str, ext_id: str) -> Lookup:
    """The record's thumbnail; a record stored with thumbnails off exists without one."""
    row = connection.execute(
        select(records.c.id, thumbnails.c.media_type, thumbnails.c.data)
        .select_from(records.outerjoin(thumbnails, records.c.id == thumbnails.c.record_id))
        .where(records.c.collection_id == collection_id, records.c.ext_id == ext_id)
    ).first()
    if row is None:
        return Lookup(record_exists=False)
    return Lookup(True) if row[2] is None else Lookup(True, str(row[1]), bytes(row[2]))
