"""Which records match a filter, for allRecords and random: all of them (one scan), or which of given candidates.

allRecords and random pick *which* row ids to answer from the server's in-memory list of live row ids, or from
these functions under a filter, then fetch the rows by primary key (``records.get_by_row_ids``) a chunk at a time:
no query ever walks the collection with OFFSET or sorts it at random. Functions never commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.engine import Connection

from matchdb.storage.filters import filter_condition
from matchdb.storage.schema import records

CHUNK = 500  # ids per IN (...) list: well inside SQLite's and Postgres's parameter limits
_STREAM_BATCH = 50_000


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
