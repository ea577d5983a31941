"""Write transactions that take turns, retries of the failures a retry cures, and which database errors mean
"the database cannot answer now" (:class:`~matchdb.errors.DatabaseUnavailable`, a 503) rather than a bug.

Every write transaction starts by taking the writers' turn: on SQLite a place in a fair queue (:mod:`.turns`),
then ``BEGIN IMMEDIATE`` (the write lock); on Postgres the change-log table lock (waited for up to
``lock_timeout``). Writers therefore never interleave, so a path that reads and then writes (update's merge) sees
no other writer's half-done work, no two writers can deadlock, and SQLite never has to abandon a transaction whose
snapshot went stale ("database is locked" without waiting). Upserts are single ``INSERT ... ON CONFLICT``
statements on top of that (see :mod:`matchdb.storage.records`), so they stay atomic even without the turn.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, TypeVar

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from matchdb.errors import DatabaseUnavailable
from matchdb.storage.changes import TURN_HELD, WRITERS_LOCK
from matchdb.storage.turns import sqlite_writer_turn

T = TypeVar("T")
log = logging.getLogger("matchdb.storage")

DEFAULT_TIMEOUT = 10.0  # seconds: see MATCHDB_DATABASE_TIMEOUT
DEFAULT_ATTEMPTS = 3

Trouble = Literal["busy", "down"]

# Postgres SQLSTATEs: a retry cures these (the transaction was rolled back) ...
_PG_BUSY = {"40001", "40P01", "55P03", "57014"}  # serialization failure, deadlock, lock timeout, statement timeout
# ... and these mean the server is unreachable, shutting down or starting up (class 08: connection exceptions).
_PG_DOWN = {"57P01", "57P02", "57P03", "53300"}  # admin/crash shutdown, cannot connect now, too many connections
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
_SQLITE_DOWN = ("unable to open database file", "disk i/o error", "database or disk is full")


def trouble(exc: BaseException) -> Trouble | None:
    """``"busy"`` (locked, deadlock, serialization: retry soon), ``"down"`` (cannot connect, shutting down,
    connection lost), or None: an error that says nothing about the database's health (a bug, bad SQL)."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return "busy"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        if sqlstate in _PG_BUSY:
            return "busy"
        if sqlstate in _PG_DOWN or sqlstate.startswith("08"):
            return "down"
        return None
    if exc.connection_invalidated:
        return "down"
    message = str(exc.orig).lower()
    if any(text in message for text in _SQLITE_BUSY):
        return "busy"
    if any(text in message for text in _SQLITE_DOWN):
        return "down"
    # psycopg reports a refused or broken connection as an OperationalError without a SQLSTATE, and the use of
    # a connection that broke as an InterfaceError.
    broken = isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))
    if broken and type(exc.orig).__module__.startswith("psycopg"):
        return "down"
    return None


def unavailable(exc: BaseException) -> DatabaseUnavailable | None:
    """The :class:`DatabaseUnavailable` that ``exc`` amounts to, or None when it is not about the database's health."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    kind = trouble(exc)
    if kind == "busy":
        return DatabaseUnavailable("The database is busy; retry shortly", retry_after=1)
    if kind == "down":
        return DatabaseUnavailable("The database is unavailable; retry shortly", retry_after=2)
    return None


@contextlib.contextmanager
def write_transaction(engine: Engine, timeout: float = DEFAULT_TIMEOUT) -> Iterator[Connection]:
    """A transaction that holds the writers' turn from its first statement to its commit."""
    if engine.dialect.name == "sqlite":
        # Queue fairly first (see turns.py), then take SQLite's write lock. pysqlite opens transactions itself only
        # before DML; an explicit BEGIN is left alone, and commit() ends it.
        with sqlite_writer_turn(engine.url.database, timeout), engine.begin() as connection:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            yield connection
        return
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # Postgres queues lock requests in order: fair already
            milliseconds = max(1, round(timeout * 1000))
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}; {WRITERS_LOCK}")  # one round trip
            connection.execution_options(**{TURN_HELD: True})
        yield connection


@dataclass(frozen=True)
class Writer:
    """Runs write transactions: retries those that failed for a reason a retry cures (a lock, a deadlock), a
    bounded number of ``attempts`` and not past ``timeout`` seconds; any failure that amounts to the database being
    unavailable is raised as :class:`DatabaseUnavailable`."""

    engine: Engine
    attempts: int = DEFAULT_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one write transaction, committed when it returns."""
        deadline = time.monotonic() + self.timeout
        attempt = 1
        while True:
            try:
                with write_transaction(self.engine, self.timeout) as connection:
                    return work(connection)
            except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
                kind = trouble(exc)
                if kind == "busy" and attempt < self.attempts and time.monotonic() < deadline:
                    log.info("write transaction attempt %d failed (%s): retrying", attempt, _first_line(exc))
                    time.sleep(random.uniform(0.5, 1.5) * 0.05 * 2**attempt)
                    attempt += 1
                    continue
                converted = unavailable(exc)
                if converted is None:
                    raise
                raise converted from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0]
