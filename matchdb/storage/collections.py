"""Collections: a server-made id (UUID4) and a name unique within the workspace.

Functions take an open connection and never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, delete, func, insert, literal, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from matchdb.errors import MatchdbError
from matchdb.storage.changes import append_change, serialise_writers
from matchdb.storage.schema import collections, records, workspaces
from matchdb.storage.tokens import workspace_id


class CollectionExists(MatchdbError):
    """A collection of that name exists already in the workspace."""


@dataclass(frozen=True)
class CollectionInfo:
    id: str
    name: str
    workspace: str
    created_at: datetime
    record_count: int = 0
    geometric: bool = False  # records keep a geometric signature (matchdb.geometric)


def _select(with_count: bool = True) -> Select[Any]:
    """Collections with their record count (a count of the collection's rows: skip it where it is not shown)."""
    count: Any = (
        select(func.count()).select_from(records).where(records.c.collection_id == collections.c.id).scalar_subquery()
        if with_count
        else literal(0)
    )
    columns = (collections.c.id, collections.c.name, workspaces.c.name, collections.c.created_at, count)
    return select(*columns, collections.c.geometric).join(workspaces, workspaces.c.id == collections.c.workspace_id)


def create_collection(connection: Connection, workspace: str, name: str, geometric: bool = False) -> CollectionInfo:
    if not name or len(name) > 200:
        raise ValueError("a collection name must have 1 to 200 characters")
    new_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    ws = workspace_id(connection, workspace)
    exists = connection.execute(
        select(collections.c.id).where(collections.c.workspace_id == ws, collections.c.name == name)
    ).first()
    if exists is not None:
        raise CollectionExists(f"a collection named {name!r} exists already")
    try:
        with connection.begin_nested():
            connection.execute(
                insert(collections).values(id=new_id, workspace_id=ws, name=name, created_at=now, geometric=geometric)
            )
    except IntegrityError as exc:  # a concurrent create won the race
        raise CollectionExists(f"a collection named {name!r} exists already") from exc
    return CollectionInfo(new_id, name, workspace, now, 0, geometric)


def list_collections(
    connection: Connection, workspace: str | None = None, with_count: bool = True
) -> list[CollectionInfo]:
    query = _select(with_count).order_by(collections.c.created_at, collections.c.id)
    if workspace is not None:
        query = query.where(workspaces.c.name == workspace)
    return [CollectionInfo(*row) for row in connection.execute(query)]


def find_collection(
    connection: Connection, workspace: str | None, key: str, with_count: bool = True
) -> CollectionInfo | None:
    """The collection whose id (or name) is ``key``, in ``workspace`` (any workspace if None). Without
    ``with_count`` its ``record_count`` is 0: every API request looks its collection up, and counting a million
    rows each time cost most of a request's time."""
    query = _select(with_count).where(or_(collections.c.id == key, collections.c.name == key))
    if workspace is not None:
        query = query.where(workspaces.c.name == workspace)
    rows = connection.execute(query).all()
    by_id = [row for row in rows if row[0] == key]
    chosen = by_id or rows
    return CollectionInfo(*chosen[0]) if len(chosen) == 1 else None


def delete_collection(connection: Connection, collection_id: str) -> bool:
    serialise_writers(connection)  # first: an insert racing with this delete then either lands before it or sees it
    deleted = connection.execute(delete(collections).where(collections.c.id == collection_id)).rowcount
    if deleted:
        connection.execute(delete(records).where(records.c.collection_id == collection_id))
        append_change(connection, collection_id, "drop")
    return bool(deleted)


def collection_is_geometric(engine: Engine, collection_id: str) -> bool:
    """Whether the collection was created with geometric matching (its records then keep a signature)."""
    with engine.connect() as connection:
        value = connection.execute(select(collections.c.geometric).where(collections.c.id == collection_id)).scalar()
    return bool(value)
