"""The change log: every write appends to it in the same transaction, with a monotonically increasing ``seq``.

Server processes remember the highest ``seq`` they have applied and catch up from there, so a write acknowledged
by any process is visible to every later query (read-after-write across workers and replicas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, func, insert, select, text
from sqlalchemy.engine import Connection

from matchdb.storage.schema import changes


@dataclass(frozen=True)
class Change:
    seq: int
    collection_id: str
    op: str  # upsert | update | delete | drop | rebuild (collection_id "*" for every collection)
    record_id: int | None


WRITERS_LOCK = "LOCK TABLE changes IN SHARE ROW EXCLUSIVE MODE"
TURN_HELD = "matchdb_writers_turn"  # execution option of a connection whose transaction holds the lock already


def serialise_writers(connection: Connection) -> None:
    """On Postgres, writers take turns until commit, so ``seq`` values become visible in increasing order and a
    reader that has seen ``seq`` N can never later find an N - 1 (SQLite has a single writer anyway)."""
    if connection.dialect.name == "postgresql" and not connection.get_execution_options().get(TURN_HELD):
        connection.execute(text(WRITERS_LOCK))


ALL_COLLECTIONS = "*"


def append_change(connection: Connection, collection_id: str, op: str, record_id: int | None = None) -> int:
    """Append one change; returns its ``seq``."""
    serialise_writers(connection)
    result = connection.execute(
        insert(changes).values(collection_id=collection_id, op=op, record_id=record_id, created_at=datetime.now(UTC))
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def append_changes(connection: Connection, collection_id: str, op: str, record_ids: Sequence[int]) -> None:
    if not record_ids:
        return
    serialise_writers(connection)
    now = datetime.now(UTC)
    connection.execute(
        insert(changes),
        [{"collection_id": collection_id, "op": op, "record_id": rid, "created_at": now} for rid in record_ids],
    )


PRUNED = "pruned"  # the marker op: ``record_id`` holds the last seq deleted


def prune_changes(connection: Connection, older_than: datetime) -> tuple[int, int]:
    """Delete the log entries created before ``older_than``; returns (entries deleted, last seq deleted).

    Servers catch up every couple of seconds (heartbeat), so only a server frozen for longer than the retention can
    still need them. For that one a marker is appended: a server that finds it with a seq it has not reached yet
    lost changes, and reloads its indexes from the database instead of trusting them."""
    serialise_writers(connection)
    upto = connection.execute(select(func.max(changes.c.seq)).where(changes.c.created_at < older_than)).scalar()
    if upto is None:
        return 0, 0
    # The marker first: it outlives the delete, so the highest seq never goes (SQLite would hand it out again).
    append_change(connection, ALL_COLLECTIONS, PRUNED, int(upto))
    deleted = connection.execute(delete(changes).where(changes.c.seq <= upto)).rowcount
    return int(deleted), int(upto)


def latest_seq(connection: Connection) -> int:
    return int(connection.execute(select(func.coalesce(func.max(changes.c.seq), 0))).scalar_one())


# Built once: every collection query runs this, and building the statement cost more than the round trip.
_SINCE = (
    select(changes.c.seq, changes.c.collection_id, changes.c.op, changes.c.record_id)
    .where(changes.c.seq > bindparam("after"))
    .order_by(changes.c.seq)
    .limit(bindparam("limit"))
)


def changes_since(connection: Connection, seq: int, limit: int = 10_000) -> list[Change]:
    return [Change(*row) for row in connection.execute(_SINCE, {"after": seq, "limit": limit})]
