"""Table definitions. Alembic migrations create them; this module only describes them for queries.

A naming convention gives every constraint a stable name, so the same migrations (run in batch mode on SQLite)
can alter them on SQLite and Postgres alike.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that reads back as an aware UTC datetime on every database. SQLite keeps no zone, so its values
    came back naive, and the API showed ``created_at`` with a zone after a create but without one in a list."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

workspaces = Table(
    "workspaces",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("workspace_id", Integer, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False),
    # SHA-256 of the token: tokens are long random strings, so a fast hash is enough and nothing is kept in clear.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("read_only", Boolean, nullable=False),
    Column("note", String(200), nullable=False, default=""),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

collections = Table(
    "collections",
    metadata,
    Column("id", String(36), primary_key=True),  # server-made UUID4
    Column("workspace_id", Integer, ForeignKey("workspaces.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # Created with geometric matching: each record also keeps a geometric signature (geometric_signatures).
    Column("geometric", Boolean, nullable=False, default=False, server_default="0"),
    UniqueConstraint("workspace_id", "name", name="uq_collections_workspace_id_name"),
)

records = Table(
    "records",
    metadata,
    # The row id doubles as insertion order: ties between equally distant answers are ordered by it.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("collection_id", String(36), ForeignKey("collections.id", ondelete="CASCADE"), nullable=False),
    Column("ext_id", String(500), nullable=False),  # the caller's _id
    Column("attributes", JSON, nullable=False),  # every attribute but _id, _base64 and the computed ones
    Column("source_url", Text, nullable=True),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("checksum", String(64), nullable=False),  # SHA-256 of the image bytes: reruns of an ingest skip unchanged
    Column("bmh1", LargeBinary, nullable=False),
    Column("phash", LargeBinary, nullable=False),
    Column("hash_version", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    UniqueConstraint("collection_id", "ext_id", name="uq_records_collection_id_ext_id"),
)

# Every write appends here in its own transaction; servers catch up from the highest seq they have seen.
changes = Table(
    "changes",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("collection_id", String(36), nullable=False),
    Column("op", String(16), nullable=False),  # upsert | delete | drop | rebuild | pruned (see changes.py)
    Column("record_id", BigInteger, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Index("ix_changes_collection_id_seq", "collection_id", "seq"),
)

# One row per running server process (each keeps its own indexes): heartbeats and the index generation it serves.
servers = Table(
    "servers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("generation", BigInteger, nullable=False),  # seq of the last rebuild request it has carried out
    Column("rebuild_seconds", Float, nullable=True),
    Column("records", BigInteger, nullable=False),
)


def _record_key() -> Column[int]:
    """The key of a per-record side table: the record's row id, the row deleted with the record."""
    return Column(
        "record_id",
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("records.id", ondelete="CASCADE"),
        primary_key=True,
    )


# One small picture per record (longest side 160 px, JPEG), for the console: records inserted with ``_base64`` have
# no other image to show. Its own table, so index loads and searches, which read ``records``, never touch it.
thumbnails = Table(
    "thumbnails",
    metadata,
    _record_key(),
    Column("media_type", String(32), nullable=False),
    Column("data", LargeBinary, nullable=False),
)

# The geometric signature of each record of a geometric collection (38 window hashes, 304 bytes): written in the
# record's upsert transaction, deleted with it; read only by index loads and catch-ups.
geometric_signatures = Table(
    "geometric_signatures",
    metadata,
    _record_key(),
    Column("data", LargeBinary, nullable=False),
)
