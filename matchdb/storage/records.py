"""Records of a collection: upsert in batches, delete, attribute updates, lookups, paging and hash streaming.

Each function runs inside the caller's transaction, so a batch is stored whole or not at all, together with its
change-log entries. Functions never commit. Writers run them in
:func:`~matchdb.storage.transactions.write_transaction` (see :class:`~matchdb.storage.transactions.Writer`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from matchdb.errors import MatchdbError
from matchdb.hashing import ALGORITHM_VERSION
from matchdb.storage.changes import append_changes
from matchdb.storage.geometric import replace_signatures
from matchdb.storage.schema import changes, collections, records, tokens
from matchdb.storage.thumbnails import replace_thumbnails

HASH_VERSION = max(ALGORITHM_VERSION.values())


@dataclass(frozen=True)
class NewRecord:
    """A record to store: the caller's ``_id`` and attributes, the image facts and both hashes (packed bytes), and
    its thumbnail (None: none, or thumbnails are off); ``keep_thumbnail`` keeps the stored one (the image did not
    change, so it was not decoded again)."""

    ext_id: str
    attributes: dict[str, Any]
    source_url: str | None
    width: int
    height: int
    checksum: str
    bmh1: bytes
    phash: bytes
    thumbnail: bytes | None = None
    keep_thumbnail: bool = False
    geometric: bytes | None = None  # the geometric signature (geometric collections; None: keep the stored one)


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


# Replaced on an upsert of an existing ``_id``; ``id`` (the insertion order) and the keys stay.
_REPLACED = ("attributes", "source_url", "width", "height", "checksum", "bmh1", "phash", "hash_version", "updated_at")


class CollectionGone(MatchdbError):
    """The collection was deleted (by another request) before the write reached it."""


@functools.cache
def _upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (collection_id, ext_id) DO UPDATE ... RETURNING id, ext_id`` for ``dialect`` (built
    once: building it took a millisecond, while the writers' turn is held)."""
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(records)
    statement = statement.on_conflict_do_update(
        index_elements=[records.c.collection_id, records.c.ext_id],
        set_={name: statement.excluded[name] for name in _REPLACED},
    )
    return statement.returning(records.c.id, records.c.ext_id)


def upsert_records(connection: Connection, collection_id: str, batch: Sequence[NewRecord]) -> list[int]:
    """Store ``batch`` (``_id`` unique in it); an existing ``_id`` is replaced in place and keeps its row id
    (its insertion order). Returns the row ids in batch order.

    One statement per batch, atomic whatever runs at the same time: two requests upserting one ``_id`` at once
    both succeed and one record remains, the last writer's. Raises :class:`CollectionGone` when the collection
    was deleted meanwhile."""
    if not batch:
        return []
    if len({r.ext_id for r in batch}) != len(batch):
        raise ValueError("an _id appears twice in one batch")
    now = datetime.now(UTC)
    rows = [
        {
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
        for r in batch
    ]
    try:
        returned = connection.execute(_upsert(connection.dialect.name), rows).all()
    except IntegrityError as exc:  # the only foreign key is the collection: it went away
        if "foreign key" in str(exc.orig).lower() or getattr(exc.orig, "sqlstate", None) == "23503":
            raise CollectionGone(f"collection {collection_id} no longer exists") from exc
        raise
    ids = {str(ext_id): int(row_id) for row_id, ext_id in returned}
    row_ids = [ids[r.ext_id] for r in batch]
    pictures = [(row_id, r.thumbnail) for row_id, r in zip(row_ids, batch, strict=True) if not r.keep_thumbnail]
    replace_thumbnails(connection, pictures)
    signatures = [(row_id, r.geometric) for row_id, r in zip(row_ids, batch, strict=True) if r.geometric]
    if signatures:
        replace_signatures(connection, signatures)
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


@dataclass(frozen=True)
class Presumed:
    """Who a request was taken to be from what this process read before (a token, a collection), to be confirmed
    by the statement that fetches its answer: ``token_hash`` still a live token (``None``: the service still has no
    token at all, open mode), ``collection_id`` still a collection."""

    token_hash: str | None
    collection_id: str


def get_by_row_ids_as_of(
    connection: Connection, row_ids: Sequence[int], presumed: Presumed | None = None
) -> tuple[dict[int, StoredRecord], int, bool]:
    """:func:`get_by_row_ids` and the change log's last sequence number, read by the same statement (per chunk of
    ids; the largest number if several), and whether ``presumed`` holds (True without one).

    Why: a query that searched an index which had applied every change up to that number answered from an index as
    current as these records, so the catch-up query before the search can be skipped; and a token and collection
    looked up by an earlier request need not be looked up again, when this statement confirms them: one round trip
    per query, and a second try only when something did change."""
    columns = [func.coalesce(func.max(changes.c.seq), 0).label("latest")]
    if presumed is not None:
        if presumed.token_hash is None:
            token = ~select(tokens.c.id).exists()
        else:
            live = tokens.c.token_hash == presumed.token_hash, tokens.c.revoked_at.is_(None)
            token = select(tokens.c.id).where(*live).exists()
        collection = select(collections.c.id).where(collections.c.id == presumed.collection_id).exists()
        columns.append((token & collection).label("presumed"))
    latest = select(*columns).subquery()
    check = [latest.c.presumed] if presumed is not None else []
    found: dict[int, StoredRecord] = {}
    seen, holds = 0, True
    for start in range(0, max(len(row_ids), 1), _CHUNK):
        chunk = list(row_ids[start : start + _CHUNK])
        joined = latest.outerjoin(records, records.c.id.in_(chunk))
        for row in connection.execute(select(latest.c.latest, *check, *_COLUMNS).select_from(joined)):
            seen = max(seen, int(row[0]))
            holds = holds and (presumed is None or bool(row[1]))
            stored = row[1 + len(check) :]
            if stored[0] is not None:
                found[int(stored[0])] = _stored(stored)
    return found, seen, holds


def delete_records(connection: Connection, collection_id: str, ext_ids: Sequence[str]) -> dict[str, int]:
    """Delete by ``_id``; returns the row ids of those that existed (one ``DELETE ... RETURNING`` per chunk, so
    what is reported deleted is what this statement deleted, whatever else runs)."""
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(ext_ids))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start : start + _CHUNK]
        statement = (
            delete(records)
            .where(records.c.collection_id == collection_id, records.c.ext_id.in_(chunk))
            .returning(records.c.ext_id, records.c.id)
        )
        found.update({str(ext): int(rid) for ext, rid in connection.execute(statement)})
    if found:
        append_changes(connection, collection_id, "delete", list(found.values()))
    return found


def update_attributes(
    connection: Connection,
    collection_id: str,
    patches: Mapping[str, Mapping[str, Any]],
    refuse: Callable[[dict[str, Any]], str | None] = lambda _: None,
) -> dict[str, str | None]:
    """Merge each patch into the stored attributes (a ``None`` value removes the key), for the records that exist;
    returns, for each of them, ``None`` when written or why ``refuse`` kept it as it was. Hashes never change here.
    It reads, then writes: run it in a :func:`~matchdb.storage.transactions.write_transaction`, whose writers take
    turns, so no other write can slip in between."""
    current = get_records(connection, collection_id, list(patches))
    now = datetime.now(UTC)
    outcome: dict[str, str | None] = {}
    for ext_id, stored in current.items():
        attributes = dict(stored.attributes)
        for key, value in patches[ext_id].items():
            if value is None:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        outcome[ext_id] = reason = refuse(attributes)
        if reason is None:
            connection.execute(
                update(records).where(records.c.id == stored.row_id).values(attributes=attributes, updated_at=now)
            )
    written = [current[e].row_id for e, reason in outcome.items() if reason is None]
    if written:
        append_changes(connection, collection_id, "update", written)
    return outcome


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
