"""Record thumbnails: written with their record's upsert (same transaction), read one at a time by the console.

Rows go away with their record (``ON DELETE CASCADE``), so deletes and collection drops need nothing here. Nothing
on the search or index-load path reads this table.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def get_thumbnail(connection: Connection, collection_id: str, ext_id: str) -> tuple[str, bytes] | None:
    """(media type, bytes) of the record's thumbnail, or None (no such record, or stored without one)."""
    row = connection.execute(
        select(thumbnails.c.media_type, thumbnails.c.data)
        .join(records, records.c.id == thumbnails.c.record_id)
        .where(records.c.collection_id == collection_id, records.c.ext_id == ext_id)
    ).first()
    return None if row is None else (str(row[0]), bytes(row[1]))
