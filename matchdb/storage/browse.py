"""Reading records in bulk for allRecords and random: by row id, without their hashes, and by filter.

allRecords and random pick *which* row ids to answer from the server's in-memory list of live row ids (or from
:func:`matching_row_ids` under a filter), then fetch the rows here by primary key, a chunk at a time: no query ever
walks the collection with OFFSET or sorts it at random. On Postgres a chunk of ids is one array parameter
(``id = ANY(...)``): an ``IN`` list of a thousand bound values costs more to build and parse than the lookup itself
(3x, measured). Functions never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import BigInteger, ColumnElement, any_, cast, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from matchdb.storage.filters import filter_condition
from matchdb.storage.schema import records

CHUNK = 500  # ids per IN (...) list on SQLite: well inside its parameter limit
_STREAM_BATCH = 50_000


@dataclass(frozen=True)
class ShownRow:
    """What the API shows of a stored record: everything but its hashes."""

    row_id: int
    ext_id: str
    attributes: dict[str, Any]
    source_url: str | None
    width: int
    height: int


def _chunks(connection: Connection, row_ids: Sequence[int]) -> list[ColumnElement[bool]]:
    """Conditions 'the row id is one of these', one per query: a single array on Postgres, lists on SQLite."""
    ids = [int(i) for i in row_ids]
    if connection.dialect.name == "postgresql":
        return [records.c.id == any_(cast(literal(ids, ARRAY(BigInteger)), ARRAY(BigInteger)))] if ids else []
    return [records.c.id.in_(ids[start : start + CHUNK]) for start in range(0, len(ids), CHUNK)]


def shown_by_row_ids(connection: Connection, row_ids: Sequence[int]) -> dict[int, ShownRow]:
    """The records with these row ids (those that still exist), without their hashes."""
    columns = (records.c.id, records.c.ext_id, records.c.attributes, records.c.source_url, records.c.width)
    out = {}
    for condition in _chunks(connection, row_ids):
        for row in connection.execute(select(*columns, records.c.height).where(condition)).all():
            out[int(row[0])] = ShownRow(int(row[0]), row[1], dict(row[2]), row[3], row[4], row[5])
    return out


def ext_ids_by_row_ids(connection: Connection, row_ids: Sequence[int]) -> dict[int, str]:
    """Just the ``_id`` of the records with these row ids (``get_all_ids`` asks for nothing else)."""
    out: dict[int, str] = {}
    for condition in _chunks(connection, row_ids):
        out.update(
            (int(row[0]), row[1])
            for row in connection.execute(select(records.c.id, records.c.ext_id).where(condition)).all()
        )
    return out


def matching_row_ids(
    connection: Connection, collection_id: str, filter_: Mapping[str, Any] | None
) -> npt.NDArray[np.int64]:
    """Row ids (ascending: insertion order) of the collection's records that match ``filter_``. One scan,
    streamed into an array: 8 bytes per match, never a Python object per row kept."""
    condition = filter_condition(connection.dialect.name, filter_)
    result = connection.execution_options(stream_results=True, yield_per=_STREAM_BATCH).execute(
        select(records.c.id).where(records.c.collection_id == collection_id, condition).order_by(records.c.id)
    )
    parts = [np.fromiter((row[0] for row in part), np.int64, len(part)) for part in result.partitions()]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def matching_among(
    connection: Connection, collection_id: str, candidates: Sequence[int], filter_: Mapping[str, Any] | None
) -> set[int]:
    """Which of the ``candidates`` row ids are records of the collection that match ``filter_`` (primary-key
    lookups: the filter is evaluated on these rows only)."""
    condition = filter_condition(connection.dialect.name, filter_)
    found: set[int] = set()
    for start in range(0, len(candidates), CHUNK):
        chunk = [int(i) for i in candidates[start : start + CHUNK]]
        query = select(records.c.id).where(records.c.id.in_(chunk), records.c.collection_id == collection_id, condition)
        found.update(int(row[0]) for row in connection.execute(query))
    return found
