"""Engine creation and schema upgrades (Alembic), the same way for SQLite and Postgres."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry

from matchdb.errors import ConfigError

_ADVISORY_LOCK_KEY = 0x6D61_7463_6864_62  # "matchdb": one key for every replica migrating the same database


def make_engine(url: str, timeout: float = 10.0) -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL and a busy timeout so several processes can share it.

    ``timeout`` (``MATCHDB_DATABASE_TIMEOUT``) bounds every wait for the database: a connection (Postgres connect
    timeout), a free connection in the pool, SQLite's write lock. A stopped Postgres refuses at once; a ping of
    connections idle for a while (:func:`_ping_if_idle`) replaces pooled connections that died with it, so service
    resumes by itself when it is back. Errors never show
    a statement's parameters (``hide_parameters``): they hold callers' data, and once held megabytes of it."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError and friends for malformed URLs
        raise ConfigError(f"invalid database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {parsed.drivername!r} in {url!r}: use sqlite:///PATH or postgresql://..."
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            with contextlib.suppress(OSError):  # if it cannot be made, SQLite says why when it connects
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # the user data dir on first use
        in_memory = parsed.database in (None, "", ":memory:")  # a single-connection pool, without a timeout
        pool = {} if in_memory else {"pool_timeout": timeout}
        engine = create_engine(parsed, connect_args={"timeout": timeout}, hide_parameters=True, **pool)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No server-side prepared statements: psycopg prepares a query after 5 runs, and a plan fixed while a table
    # was small made batch upserts 5x slower as it grew (measured: 0.9 s -> 8.8 s per 5,000 records).
    connect_args = {"prepare_threshold": None, "connect_timeout": max(2, math.ceil(timeout))}
    engine = create_engine(parsed, pool_timeout=timeout, connect_args=connect_args, hide_parameters=True)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", _ping_if_idle)
    return engine


PING_IDLE_SECONDS = 1.0  # a pooled connection idle longer than this is pinged before use


def single_reads(engine: Engine) -> Connection:
    """A pooled connection for reads that need no snapshot across statements (a token, a collection, an answer's
    records): in autocommit, so each is one round trip, without a BEGIN before it and a ROLLBACK after it (on
    Postgres those are two more, a millisecond per request at load)."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def _note_checkin(_dbapi_connection: object, record: ConnectionPoolEntry) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: object) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for a connection idle longer than ``PING_IDLE_SECONDS``.

    Why: a ping before every checkout is a round trip per request (with a busy pool, the connection was in use a
    moment ago). A connection that died while idle (Postgres restarted) is still replaced before use: raising
    ``DisconnectionError`` here makes the pool discard it and connect anew. One that dies in use fails its
    statement, and SQLAlchemy then invalidates the whole pool (every older connection reconnects)."""
    if time.monotonic() - record.info.get("checked_in", math.inf) <= PING_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        # The ping must leave no transaction open (psycopg began one): a checkout for single_reads switches the
        # connection to autocommit, which a driver refuses inside a transaction.
        dbapi_connection.rollback()
    except Exception as exc:  # any failure: the connection is no good
        raise DisconnectionError(str(exc)) from exc


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def migrations_dir() -> Path:
    """The ``migrations/`` folder, installed alongside matchdb as the ``matchdb_migrations`` package."""
    spec = importlib.util.find_spec("matchdb_migrations")
    if spec is None or spec.origin is None:
        raise ConfigError("matchdb's Alembic migrations are not installed (package matchdb_migrations)")
    return Path(spec.origin).parent


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration pointing at the project's migrations, optionally bound to an open connection."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision``. On Postgres an advisory lock makes replicas starting together take turns."""
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
            connection.commit()
        try:
            command.upgrade(alembic_config(connection), revision)
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK_KEY})
                connection.commit()


def head_revision() -> str | None:
    """The newest revision of the installed migrations (what ``upgrade`` brings a database to)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
