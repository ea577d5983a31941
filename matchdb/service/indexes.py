"""The registry of in-memory indexes of one server process: one per (collection, hash type).

Indexes load in the background (every collection at start, or on first use), streamed from the database; a query
on a collection still loading waits for it up to a limit (then :class:`IndexLoading`, a 503). Before every query
the registry catches up from the change log, so a write acknowledged by any process is visible (read-after-write).
Changes that arrive while a collection loads are kept and replayed once it is ready: add and remove are idempotent,
so replaying what the load already saw is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from matchdb.errors import MatchdbError
from matchdb.hashing import HASH_TYPES, NBITS
from matchdb.index import BKTreeIndex, HammingIndex
from matchdb.storage.changes import Change, changes_since, latest_seq
from matchdb.storage.collections import list_collections
from matchdb.storage.records import get_by_row_ids, stream_hashes

IndexFactory = Callable[[int], HammingIndex]
log = logging.getLogger("matchdb.index")


class IndexLoading(MatchdbError):
    """The collection's index is still loading after the wait allowed."""


@dataclass
class CollectionIndex:
    """The indexes of one collection, by hash type, and whether they are ready."""

    by_kind: dict[str, HammingIndex] = field(default_factory=dict)
    state: str = "loading"
    ready: threading.Event = field(default_factory=threading.Event)
    pending: list[Change] = field(default_factory=list)  # changes seen while loading, replayed when ready
    load_seconds: float = 0.0
    error: str = ""

    @property
    def size(self) -> int:
        index = self.by_kind.get("bmh1")
        return len(index) if index is not None and self.state == "ready" else 0


class IndexRegistry:
    """Blocking (SQL and CPU): call from worker threads, never from the event loop."""

    def __init__(self, engine: Engine, factory: IndexFactory = BKTreeIndex) -> None:
        self._engine = engine
        self._factory = factory
        self._lock = threading.RLock()
        self._collections: dict[str, CollectionIndex] = {}
        self._seq = -1

    def states(self) -> dict[str, CollectionIndex]:
        with self._lock:
            return dict(self._collections)

    def load_all_in_background(self) -> threading.Thread:
        """Start loading every collection's index (what a server does at start)."""

        def run() -> None:
            self.catch_up()
            with self._engine.connect() as connection:
                ids = [info.id for info in list_collections(connection)]
            for collection_id in ids:
                self._ensure_loading(collection_id, background=False)

        thread = threading.Thread(target=run, name="matchdb-index-load", daemon=True)
        thread.start()
        return thread

    def get(self, collection_id: str, wait: float = 30.0) -> CollectionIndex:
        """The collection's indexes, current as of now; waits up to ``wait`` seconds for a load in progress."""
        self.catch_up()
        loaded = self._ensure_loading(collection_id, background=True)
        if not loaded.ready.wait(wait):
            raise IndexLoading(f"the index of this collection is still loading (waited {wait:g} s); retry shortly")
        if loaded.error:
            raise MatchdbError(f"the index of this collection failed to load: {loaded.error}")
        return loaded

    def _ensure_loading(self, collection_id: str, background: bool) -> CollectionIndex:
        with self._lock:
            loaded = self._collections.get(collection_id)
            if loaded is not None:
                return loaded
            loaded = CollectionIndex({kind: self._factory(NBITS[kind]) for kind in HASH_TYPES})
            self._collections[collection_id] = loaded
        if background:
            threading.Thread(target=self._load, args=(collection_id, loaded), daemon=True).start()
        else:
            self._load(collection_id, loaded)
        return loaded

    def catch_up(self) -> int:
        """Apply every change not seen yet; returns how many there were. One indexed query when idle."""
        with self._lock, self._engine.connect() as connection:
            if self._seq < 0:
                self._seq = latest_seq(connection)
                return 0
            applied = 0
            while True:
                batch = changes_since(connection, self._seq)
                if not batch:
                    return applied
                ready = []
                for change in batch:
                    loaded = self._collections.get(change.collection_id)
                    if loaded is None:
                        continue
                    if loaded.state == "ready":
                        ready.append(change)
                    else:
                        loaded.pending.append(change)
                self._apply(connection, ready)
                self._seq = batch[-1].seq
                applied += len(batch)

    def _apply(self, connection: Connection, batch: list[Change]) -> None:
        upserted = [c.record_id for c in batch if c.op == "upsert" and c.record_id is not None]
        stored = get_by_row_ids(connection, upserted) if upserted else {}
        for change in batch:
            loaded = self._collections.get(change.collection_id)
            if loaded is None:
                continue
            if change.op == "drop":
                del self._collections[change.collection_id]
            elif change.op == "delete" and change.record_id is not None:
                for index in loaded.by_kind.values():
                    index.remove(change.record_id)
            elif change.op == "upsert" and change.record_id is not None:
                record = stored.get(change.record_id)
                if record is None:  # deleted again later in the log
                    continue
                loaded.by_kind["bmh1"].add(record.row_id, int.from_bytes(record.bmh1, "little"))
                loaded.by_kind["phash"].add(record.row_id, int.from_bytes(record.phash, "little"))

    def _load(self, collection_id: str, loaded: CollectionIndex) -> None:
        """Stream the collection's hashes into the fresh indexes, then replay what changed meanwhile."""
        started = time.perf_counter()
        try:
            with self._engine.connect() as connection:
                for rows in stream_hashes(connection, collection_id):
                    loaded.by_kind["bmh1"].bulk_load((rid, int.from_bytes(b, "little")) for rid, b, _ in rows)
                    loaded.by_kind["phash"].bulk_load((rid, int.from_bytes(p, "little")) for rid, _, p in rows)
            with self._lock, self._engine.connect() as connection:
                self._apply(connection, loaded.pending)
                loaded.pending.clear()
                loaded.state = "ready"
        except Exception as exc:  # a failed load must not leave queries waiting forever
            log.exception("loading the index of collection %s failed", collection_id)
            with self._lock:
                loaded.error = str(exc)
                loaded.state = "failed"
                self._collections.pop(collection_id, None)
        finally:
            loaded.load_seconds = time.perf_counter() - started
            loaded.ready.set()

    def forget(self, collection_id: str) -> None:
        with self._lock:
            self._collections.pop(collection_id, None)
