"""The index folder: each collection's segments (:mod:`matchdb.index.segment`), which one a process may map, and
who builds the next one.

Files: ``<collection id>.<generation>.seg`` (the newest valid one is used), ``<collection id>.lock`` (an
exclusive ``flock`` held by the one process building or compacting that collection: the workers of one ``serve``
and several ``serve`` processes on one machine wait on it and then map what it wrote). Older generations are
unlinked as soon as a newer one is in place: processes that still map them keep their pages until they unmap
(POSIX), so nothing is served from a missing file and no space is held once the last mapping goes.

A segment is used only if it is valid as a file (checked at map) and the change log still covers it: no prune
past its position, no rebuild request after it, and its position not beyond the log's end (a database restored
from an older backup). The database stays the only truth: anything else and the collection is built from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError

from matchdb.config import data_dir
from matchdb.index.kernels import Ints
from matchdb.index.layout import Tree
from matchdb.index.segment import Mapped, SegmentHeader, SegmentInvalid, map_segment, write_segment
from matchdb.storage.changes import ALL_COLLECTIONS, PRUNED, Change, changes_since, latest_seq

log = logging.getLogger("matchdb.index")
_NAME = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(\d{1,12})\.seg$")
OFF = "off"


def default_folder(database_url: str | URL) -> Path:
    """Beside the SQLite file (``<file>-index``), else the user's data folder (``.../matchdb/index``)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database).resolve()
        return path.with_name(path.name + "-index")
    return data_dir() / "index"


def database_identity(engine: Engine) -> str:
    """Who the database is, so a segment of another one is never served: on Postgres the cluster's system
    identifier and the database's oid (a database dropped and created again gets a new one), on SQLite the file's
    resolved path, device and inode."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "").resolve()
        stat = path.stat()
        return f"sqlite:{path}:{stat.st_dev}:{stat.st_ino}"
    with engine.connect() as connection:
        name, oid = connection.execute(
            text("SELECT current_database(), oid FROM pg_database WHERE datname = current_database()")
        ).one()
    system = ""
    try:
        with engine.connect() as connection:
            system = str(connection.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar_one())
    except DBAPIError:  # not allowed to read it: the server's address stands in
        with engine.connect() as connection:
            system = str(connection.execute(text("SELECT inet_server_addr() || ':' || inet_server_port()")).scalar())
    return f"postgresql:{system}:{oid}:{name}"


def segment_store(folder_setting: str, engine: Engine) -> SegmentStore | None:
    """The index folder ``MATCHDB_INDEX_FOLDER`` names (empty: :func:`default_folder`; ``off``: none), or None
    when segments are off or the database is in memory."""
    if folder_setting.strip().lower() == OFF or database_identity_unneeded(engine):
        return None
    folder = Path(folder_setting) if folder_setting else default_folder(engine.url)
    return SegmentStore(folder, lambda: database_identity(engine))


def database_identity_unneeded(engine: Engine) -> bool:
    """An in-memory SQLite database: nothing outlives the process, so nothing to keep on disk."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and (not url.database or url.database == ":memory:")


def changes_after(connection: Connection, position: int, collection_id: str) -> list[Change] | None:
    """The collection's changes after ``position``, to replay over a segment; None if the log no longer covers
    them (pruned past it, a rebuild requested since, or the position is past the log's end)."""
    if position > latest_seq(connection):
        return None
    found: list[Change] = []
    seq = position
    while batch := changes_since(connection, seq):
        for change in batch:
            if change.op == PRUNED and change.record_id is not None and change.record_id > position:
                return None
            if change.op == "rebuild" and change.collection_id in (collection_id, ALL_COLLECTIONS):
                return None
            if change.collection_id == collection_id:
                found.append(change)
        seq = batch[-1].seq
    return found


class SegmentStore:
    """One index folder of one database. Thread-safe (no state but the folder)."""

    def __init__(self, folder: Path, database: str | Callable[[], str]) -> None:
        self.folder = folder
        self._database = database

    @property
    def database(self) -> str:
        """The database's identity (:func:`database_identity`), asked once, when first needed (in a load)."""
        if callable(self._database):
            self._database = self._database()
        return self._database

    def path(self, collection_id: str, generation: int) -> Path:
        return self.folder / f"{collection_id}.{generation}.seg"

    def generations(self, collection_id: str) -> list[tuple[int, Path]]:
        """The collection's segment files, newest generation first."""
        found = []
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            match = _NAME.match(entry.name)
            if match and match.group(1) == collection_id:
                found.append((int(match.group(2)), Path(entry.path)))
        return sorted(found, reverse=True)

    def newest(self, collection_id: str, newer_than: int = -1) -> Mapped | None:
        """The newest segment of the collection that maps and passes every file check, if it is newer than
        ``newer_than``. An invalid one is logged and left for the next build, which writes the generation after it
        and unlinks it (generations are never reused, so a process compacting past its own sees the new one)."""
        for generation, path in self.generations(collection_id):
            if generation <= newer_than:
                return None
            try:
                return map_segment(path, self.database, collection_id)
            except FileNotFoundError:  # replaced by a newer one meanwhile
                continue
            except (SegmentInvalid, OSError) as exc:
                log.warning("index segment %s not used (%s): the index is built from the database", path, exc)
        return None

    def acquire(self, collection_id: str) -> int:
        """Take the collection's build lock, waiting for another process's build or compaction to end; returns
        what :meth:`release` takes. ``OSError`` if the folder cannot be made or written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / f"{collection_id}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release(self, lock: int) -> None:
        os.close(lock)  # releases the flock

    def write(self, collection_id: str, position: int, trees: dict[str, Tree], row_ids: Ints) -> Path | None:
        """Write the next generation (under :meth:`building`), then unlink the older ones; None, with a warning,
        if it cannot be written (a full disk): the caller serves its heap index as before segments."""
        older = self.generations(collection_id)
        generation = older[0][0] + 1 if older else 1
        path = self.path(collection_id, generation)
        header = SegmentHeader(self.database, collection_id, generation, position, trees["bmh1"].size)
        try:
            write_segment(path, header, trees, row_ids)
        except OSError as exc:
            log.warning("index segment %s not written (%s): serving the index from memory", path, exc)
            return None
        for _, old in older:
            with contextlib.suppress(OSError):
                old.unlink()
        return path

    def remove(self, collection_id: str) -> None:
        """Unlink the collection's files (it was deleted); processes that map them keep their pages until done."""
        for _, path in self.generations(collection_id):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            (self.folder / f"{collection_id}.lock").unlink()

    def sweep(self, keep: set[str]) -> None:
        """Remove the files of collections not in ``keep`` (deleted while no server ran)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            match = _NAME.match(entry.name)
            if match and match.group(1) not in keep:
                self.remove(match.group(1))
