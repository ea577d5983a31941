"""Upsert of many records whose hashes are given (an import of precomputed hashes), set-based: no statement per row.

The batch is loaded into a temporary staging table (on Postgres with one ``COPY`` of a prebuilt text buffer, on
SQLite with one ``executemany``), then a few statements do the rest against it: an ``INSERT ... SELECT`` of the
``_id`` values not stored yet (in batch order, so row ids keep the manifest's order), an ``UPDATE ... FROM`` of the
records whose hashes, attributes or ``_url`` differ, and the change-log entries of both, so every server's index
catches up as after any write. On Postgres a batch that is likely all new (the last one was) skips the stage: it is
copied straight into ``records`` and ``changes``. Like :func:`~matchdb.storage.records.upsert_records` it runs
inside the caller's transaction (a batch is stored whole or not at all) and takes the writers' turn.

A record written so has no image facts: width and height 0 and an empty checksum (no image bytes were seen), until
an ingest of its image replaces them. A record whose hashes did not change keeps its image facts and thumbnail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import String, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from matchdb.storage.changes import serialise_writers
from matchdb.storage.records import HASH_VERSION, CollectionGone
from matchdb.storage.schema import UTCDateTime


@dataclass(frozen=True)
class HashRows:
    """Records to upsert, column by column: ``_id`` values (unique), attributes, ``_url`` values and the packed
    hashes, one row each (``bmh1`` is ``(n, 121)`` and ``phash`` ``(n, 8)`` uint8)."""

    ext_ids: list[str]
    attributes: list[dict[str, Any]]
    source_urls: list[str | None]
    bmh1: np.ndarray
    phash: np.ndarray

    def __len__(self) -> int:
        return len(self.ext_ids)


@dataclass(frozen=True)
class Written:
    new: int
    updated: int


_STAGE = "matchdb_hash_import"
_STAGE_COLUMNS = "ord, ext_id, attributes, source_url, bmh1, phash"

_CREATE = {
    "postgresql": f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ord integer, ext_id varchar(500), attributes text, "
    "source_url text, bmh1 bytea, phash bytea, rid bigint, changed boolean) ON COMMIT DELETE ROWS",
    "sqlite": f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (ord INTEGER, ext_id TEXT, attributes TEXT, "
    "source_url TEXT, bmh1 BLOB, phash BLOB, rid INTEGER)",
}

# What counts as a change: the hashes, the attributes (as JSON values on Postgres, whose json type has no equality;
# as the text SQLAlchemy writes on SQLite) and the _url. Image facts are reset only when the hashes change.
_DIFFERS = {
    "postgresql": "(records.bmh1 <> s.bmh1 OR records.phash <> s.phash "
    "OR records.attributes::jsonb <> s.attributes::jsonb OR records.source_url IS DISTINCT FROM s.source_url)",
    "sqlite": "(records.bmh1 <> s.bmh1 OR records.phash <> s.phash OR records.attributes <> s.attributes "
    "OR records.source_url IS NOT s.source_url)",
}
_SAME_HASHES = "records.bmh1 = s.bmh1 AND records.phash = s.phash"
_SET = (
    "attributes = s.attributes{cast}, source_url = s.source_url, "
    f"width = CASE WHEN {_SAME_HASHES} THEN records.width ELSE 0 END, "
    f"height = CASE WHEN {_SAME_HASHES} THEN records.height ELSE 0 END, "
    f"checksum = CASE WHEN {_SAME_HASHES} THEN records.checksum ELSE '' END, "
    "bmh1 = s.bmh1, phash = s.phash, hash_version = :version, updated_at = :now"
)
# Each stage row finds its record by a scalar subquery, which always probes the unique index once per row: as a
# join, the planner scanned every record of the collection per batch when their statistics were stale (as they are
# during a large import), which made a 1M-row import quadratic.
_FIND = (
    f"UPDATE {_STAGE} SET rid = (SELECT r.id FROM records r WHERE r.collection_id = :collection "
    f"AND r.ext_id = {_STAGE}.ext_id) RETURNING rid"
)
_UPDATE = (
    "UPDATE records SET {set} FROM {stage} s WHERE records.id = s.rid AND {differs} "
    "RETURNING records.id, records.checksum"
)
_INSERT = (
    "INSERT INTO records (collection_id, ext_id, attributes, source_url, width, height, checksum, bmh1, phash, "
    "hash_version, updated_at) SELECT :collection, s.ext_id, s.attributes{cast}, s.source_url, 0, 0, '', s.bmh1, "
    "s.phash, :version, :now FROM {stage} s WHERE s.rid IS NULL ORDER BY s.ord{conflict} RETURNING id"
)
_LOG = (
    "INSERT INTO changes (collection_id, op, record_id, created_at) "
    "SELECT :collection, 'upsert', id, :now FROM (SELECT id FROM {} ORDER BY id) ids"
)
_UNTHUMB = "DELETE FROM thumbnails WHERE record_id IN (SELECT id FROM {} WHERE checksum = '')"


def _statement(sql: str) -> Any:
    types: dict[str, Any] = {"now": UTCDateTime(), "collection": String()}
    return text(sql).bindparams(*(bindparam(name, type_=kind) for name, kind in types.items() if f":{name}" in sql))


def _postgres_statements() -> tuple[Any, Any, Any]:
    """The statements of a batch on Postgres, each with its change-log entries (and thumbnail removal) as
    data-modifying CTEs: no row ever comes back to Python.

    The insert comes first: its ``ON CONFLICT`` probes the unique index once per row anyway, so a batch of new rows
    (a first import) needs no lookup at all. Only when some rows were stored already does the lookup run, which
    also tells each row's record whether it differs (in the same index probe), so the update touches the changed
    records alone, found by primary key (:data:`_NESTED`)."""
    update = _UPDATE.format(set=_SET.format(cast="::json"), stage=_STAGE, differs="s.changed")
    updated = (
        f"WITH changed AS ({update}), logged AS ({_LOG.format('changed')}), "
        f"unthumb AS ({_UNTHUMB.format('changed')}) SELECT count(*) FROM changed"
    )
    # a record another writer inserted meanwhile is left to it, or updated by the lookup: never a failed batch
    insert = _INSERT.format(cast="::json", stage=_STAGE, conflict=" ON CONFLICT (collection_id, ext_id) DO NOTHING")
    inserted = f"WITH added AS ({insert}), logged AS ({_LOG.format('added')}) SELECT count(*) FROM added"
    differs = _DIFFERS["postgresql"].replace("records.", "r.")
    find = (
        f"UPDATE {_STAGE} s SET (rid, changed) = (SELECT r.id, {differs} FROM records r "
        "WHERE r.collection_id = :collection AND r.ext_id = s.ext_id) RETURNING changed"
    )
    found = f"WITH found AS ({find}) SELECT count(*) FILTER (WHERE changed) FROM found"
    return _statement(updated), _statement(inserted), _statement(found)


# The update joins the changed stage rows to their records by primary key: with hash and merge joins allowed, the
# planner (blind to the temp table's size) read every record of the table per batch, which made a rerun quadratic.
_NESTED = "SET LOCAL enable_hashjoin = {0}; SET LOCAL enable_mergejoin = {0}"
# Room to sort a batch's stage rows (by their manifest order, for the insert) in memory.
_WORK_MEM = "SET LOCAL work_mem = '64MB'"


_PG_UPDATE, _PG_INSERT, _PG_FIND = _postgres_statements()
_SQLITE_UPDATE = _statement(_UPDATE.format(set=_SET.format(cast=""), stage=_STAGE, differs=_DIFFERS["sqlite"]))
_SQLITE_INSERT = _statement(_INSERT.format(cast="", stage=_STAGE, conflict=""))
_SQLITE_FIND = _statement(_FIND)
_SQLITE_LOG = _statement(_LOG.format("(SELECT value AS id FROM json_each(:ids))"))


def upsert_hash_rows(connection: Connection, collection_id: str, rows: HashRows, *, fresh: bool = False) -> Written:
    """Store ``rows`` (``_id`` unique among them): new ``_id`` values inserted, stored ones whose hashes, attributes
    or ``_url`` differ updated in place (keeping their row id), the rest left as they are. Raises
    :class:`~matchdb.storage.records.CollectionGone` when the collection was deleted meanwhile.

    ``fresh`` says the rows are likely all new (the last batch was): on Postgres they are then copied straight into
    ``records`` (:func:`_copy_new`), and staged only if one was stored after all."""
    if not len(rows):
        return Written(0, 0)
    dialect = connection.dialect.name
    now = datetime.now(UTC)
    if dialect == "postgresql" and fresh:
        serialise_writers(connection)
        if _copy_new(connection, collection_id, rows, now):
            return Written(len(rows), 0)
    connection.exec_driver_sql(_CREATE["postgresql" if dialect == "postgresql" else "sqlite"])
    if dialect == "postgresql":
        _copy_stage(connection, rows)
    else:
        connection.exec_driver_sql(f"DELETE FROM {_STAGE}")
        connection.exec_driver_sql(f"INSERT INTO {_STAGE} ({_STAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", _tuples(rows))
    serialise_writers(connection)
    values = {"collection": collection_id, "version": HASH_VERSION, "now": now}
    try:
        if dialect == "postgresql":
            connection.exec_driver_sql(_WORK_MEM)
            new = int(connection.execute(_PG_INSERT, values).scalar_one())
            updated = 0
            if new < len(rows) and int(connection.execute(_PG_FIND, values).scalar_one()):
                connection.exec_driver_sql(_NESTED.format("off"))
                updated = int(connection.execute(_PG_UPDATE, values).scalar_one())
                connection.exec_driver_sql(_NESTED.format("on"))
        else:
            found = any(row[0] is not None for row in connection.execute(_SQLITE_FIND, values))
            changed = connection.execute(_SQLITE_UPDATE, values).all() if found else []
            added = [row[0] for row in connection.execute(_SQLITE_INSERT, values)]
            reset = [row_id for row_id, checksum in changed if checksum == ""]
            if reset:
                connection.exec_driver_sql(
                    "DELETE FROM thumbnails WHERE record_id IN (SELECT value FROM json_each(?))", (json.dumps(reset),)
                )
            logged = sorted(row[0] for row in changed) + added
            connection.execute(_SQLITE_LOG, {**values, "ids": json.dumps(logged)})
            updated, new = len(changed), len(added)
    except IntegrityError as exc:  # the only foreign key is the collection: it went away
        if "foreign key" in str(exc.orig).lower() or getattr(exc.orig, "sqlstate", None) == "23503":
            raise CollectionGone(f"collection {collection_id} no longer exists") from exc
        raise
    return Written(new, updated)


def _tuples(rows: HashRows) -> list[tuple[Any, ...]]:
    bmh1, phash = rows.bmh1.tobytes(), rows.phash.tobytes()
    first, second = rows.bmh1.shape[1], rows.phash.shape[1]
    return [
        (
            index,
            ext_id,
            json.dumps(attributes),
            url,
            bmh1[index * first : (index + 1) * first],
            phash[index * second : (index + 1) * second],
        )
        for index, (ext_id, attributes, url) in enumerate(
            zip(rows.ext_ids, rows.attributes, rows.source_urls, strict=True)
        )
    ]


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value: str) -> str:
    """``value`` as a field of COPY's text format; ``translate`` (slow per character) only when something needs
    escaping: a backslash, or a tab or line break (which ``isprintable`` rejects with any other control)."""
    return value if value.isprintable() and "\\" not in value else value.translate(_ESCAPES)


def _json(attributes: dict[str, Any]) -> str:
    """``attributes`` as JSON text for Postgres, by ``orjson`` (a tenth of ``json.dumps``'s time): Postgres compares
    them as ``jsonb``, so their spacing and escaping need not be the image path's. A value orjson does not write (an
    integer past 64 bits) takes ``json.dumps``."""
    try:
        return orjson.dumps(attributes).decode()
    except TypeError:
        return json.dumps(attributes)


def _copy_lines(rows: HashRows, heads: list[str], tail: str) -> str:
    """The batch as ``COPY`` text, one line per row: its head, then ``_id``, attributes, ``_url`` and both hashes,
    then ``tail``. Built whole (the hashes as hex with one numpy call per column) rather than a ``write_row`` per
    row."""
    width = 2 * rows.bmh1.shape[1]
    bmh1 = rows.bmh1.tobytes().hex()
    narrow = 2 * rows.phash.shape[1]
    phash = rows.phash.tobytes().hex()
    null, prefix = "\\N", "\\\\x"  # COPY's NULL, and bytea's hex prefix with its backslash escaped for COPY
    backslash, escaped = "\\", "\\\\"  # JSON text holds no raw tab or line break, maybe backslashes
    return "".join(
        [
            f"{head}\t{_field(ext_id)}\t{_json(attributes).replace(backslash, escaped)}\t"
            f"{null if url is None else _field(url)}\t{prefix}{bmh1[index * width : (index + 1) * width]}\t"
            f"{prefix}{phash[index * narrow : (index + 1) * narrow]}{tail}\n"
            for index, (head, ext_id, attributes, url) in enumerate(
                zip(heads, rows.ext_ids, rows.attributes, rows.source_urls, strict=True)
            )
        ]
    )


def _copy(connection: Connection, target: str, buffer: str) -> None:
    raw: Any = connection.connection.driver_connection
    with raw.cursor() as cursor, cursor.copy(f"COPY {target} FROM STDIN") as copy:
        copy.write(buffer)


def _copy_stage(connection: Connection, rows: HashRows) -> None:
    """The batch into the staging table with one ``COPY``."""
    _copy(connection, f"{_STAGE} ({_STAGE_COLUMNS})", _copy_lines(rows, [str(index) for index in range(len(rows))], ""))


def _copy_new(connection: Connection, collection_id: str, rows: HashRows, now: datetime) -> bool:
    """The batch straight into ``records`` and its change-log entries into ``changes``, by two ``COPY`` statements,
    if none of its ``_id`` values is stored: the staging table, the set-based insert and its ``ON CONFLICT``
    speculation were most of a first import's database time. Row ids are taken from the sequence first, in batch
    order. False (nothing written, the ids left unused) if a row was stored already: the caller then takes the
    staged path. Runs in the writers' turn, in a savepoint."""
    from psycopg import errors

    # the sequence named once (an init plan): per row, its lookup took longer than nextval; one string comes back
    taken = connection.exec_driver_sql(
        "SELECT string_agg(nextval((SELECT pg_get_serial_sequence('records', 'id'))::regclass)::text, ',') "
        f"FROM generate_series(1, {len(rows)})"
    )
    ids = str(taken.scalar_one()).split(",")
    stamp = now.isoformat()
    savepoint = connection.begin_nested()
    try:
        _copy(
            connection,
            "records (id, ext_id, attributes, source_url, bmh1, phash, collection_id, width, height, checksum, "
            "hash_version, updated_at)",
            _copy_lines(rows, ids, f"\t{collection_id}\t0\t0\t\t{HASH_VERSION}\t{stamp}"),
        )
        _copy(
            connection,
            "changes (record_id, collection_id, op, created_at)",
            "".join([f"{row_id}\t{collection_id}\tupsert\t{stamp}\n" for row_id in ids]),
        )
    except errors.UniqueViolation:
        savepoint.rollback()
        return False
    except errors.ForeignKeyViolation as exc:
        savepoint.rollback()
        raise CollectionGone(f"collection {collection_id} no longer exists") from exc
    savepoint.commit()
    return True
