"""Fair turns for SQLite writers, within a process and across the processes sharing one database file.

SQLite lets one writer in at a time, and the others wait in its busy handler, which sleeps and polls (every 100 ms
after the first few tries). Under load that is a lottery: measured with 50 clients on ``--workers 2``, some writes
waited more than 10 s while others went straight through. Here writers queue instead: first come, first served
within a process (:class:`FairLock`), and the writer at the head of each process's queue takes an ``flock`` on a
file next to the database, so processes alternate with a short poll instead of SQLite's long one. SQLite's own lock
(``BEGIN IMMEDIATE``) is still taken after that, so a writer that does not queue here stays safe, just less fair.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from matchdb.errors import DatabaseUnavailable

_POLL = 0.001  # seconds between tries of the file lock


class FairLock:
    """A lock handed to its waiters in arrival order (``threading.Lock`` wakes whichever thread the OS picks)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self, timeout: float) -> bool:
        with self._guard:
            if not self._held and not self._waiters:
                self._held = True
                return True
            baton = threading.Lock()
            baton.acquire()
            self._waiters.append(baton)
        if baton.acquire(timeout=max(0.0, timeout)):  # released by release(): the lock is ours
            return True
        with self._guard:
            if baton in self._waiters:
                self._waiters.remove(baton)
                return False
        return True  # handed over between the timeout and the guard

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().release()  # ownership passes straight to the next in line
            else:
                self._held = False


class _Turn:
    """The turn of one database file in this process: its queue, and the lock file its head holds."""

    def __init__(self, database: Path) -> None:
        self.queue = FairLock()
        self.path = database.with_name(database.name + ".writers.lock")


_turns: dict[Path, _Turn] = {}
_turns_guard = threading.Lock()


def _turn(database: str) -> _Turn:
    path = Path(database).resolve()
    with _turns_guard:
        return _turns.setdefault(path, _Turn(path))


@contextlib.contextmanager
def sqlite_writer_turn(database: str | None, timeout: float) -> Iterator[None]:
    """Hold this writer's turn on the SQLite file ``database`` (nothing for an in-memory database); raises
    :class:`DatabaseUnavailable` when it does not come within ``timeout`` seconds."""
    if not database or database == ":memory:":
        yield
        return
    deadline = time.monotonic() + timeout
    turn = _turn(database)
    if not turn.queue.acquire(timeout):
        raise DatabaseUnavailable("The database is busy; retry shortly", retry_after=1)
    try:
        descriptor = os.open(turn.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise DatabaseUnavailable("The database is busy; retry shortly", retry_after=1) from None
                    time.sleep(_POLL)
            yield  # the file lock goes with the descriptor
        finally:
            os.close(descriptor)
    finally:
        turn.queue.release()
