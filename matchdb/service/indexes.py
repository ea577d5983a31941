"""The registry of in-memory indexes of one server process: one per (collection, hash type), loaded from the
database on first use and kept current from the change log before every query (read-after-write)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from matchdb.hashing import HASH_TYPES, NBITS
from matchdb.index import BKTreeIndex, HammingIndex
from matchdb.storage.changes import Change, changes_since, latest_seq
from matchdb.storage.records import get_by_row_ids, stream_hashes

IndexFactory = Callable[[int], HammingIndex]


@dataclass
class CollectionIndex:
    """The indexes of one collection, by hash type."""

    by_kind: dict[str, HammingIndex] = field(default_factory=dict)
    state: str = "loading"

    @property
    def size(self) -> int:
        return len(self.by_kind["bmh1"]) if "bmh1" in self.by_kind else 0


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

    def get(self, collection_id: str) -> CollectionIndex:
        """The collection's indexes, current as of now: catch up from the change log, loading if needed."""
        with self._lock:
            self.catch_up()
            loaded = self._collections.get(collection_id)
            if loaded is None:
                loaded = self._load(collection_id)
            return loaded

    def catch_up(self) -> int:
        """Apply every change not seen yet to the loaded collections; returns how many were applied."""
        with self._lock, self._engine.connect() as connection:
            if self._seq < 0:
                self._seq = latest_seq(connection)
                return 0
            applied = 0
            while True:
                batch = changes_since(connection, self._seq)
                if not batch:
                    return applied
                self._apply(connection, batch)
                self._seq = batch[-1].seq
                applied += len(batch)

    def _apply(self, connection: object, batch: list[Change]) -> None:
        relevant = [c for c in batch if c.collection_id in self._collections]
        upserted = [c.record_id for c in relevant if c.op == "upsert" and c.record_id is not None]
        stored = get_by_row_ids(connection, upserted) if upserted else {}  # type: ignore[arg-type]
        for change in relevant:
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

    def _load(self, collection_id: str) -> CollectionIndex:
        """Stream the collection's hashes into fresh indexes. Changes committed while this runs are applied again by
        the next catch-up, which is harmless: add and remove are idempotent."""
        loaded = CollectionIndex({kind: self._factory(NBITS[kind]) for kind in HASH_TYPES})
        with self._engine.connect() as connection:
            for rows in stream_hashes(connection, collection_id):
                loaded.by_kind["bmh1"].bulk_load((rid, int.from_bytes(b, "little")) for rid, b, _ in rows)
                loaded.by_kind["phash"].bulk_load((rid, int.from_bytes(p, "little")) for rid, _, p in rows)
        loaded.state = "ready"
        self._collections[collection_id] = loaded
        return loaded

    def forget(self, collection_id: str) -> None:
        with self._lock:
            self._collections.pop(collection_id, None)
