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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from matchdb import metrics
from matchdb.errors import MatchdbError
from matchdb.geometric import GeometricIndex
from matchdb.hashing import HASH_TYPES, NBITS
from matchdb.index import HammingIndex, NumpyTreeIndex
from matchdb.index.segment import Mapped
from matchdb.memory import release_free_memory
from matchdb.service.rowids import RowIds
from matchdb.service.segments import SegmentStore, changes_after
from matchdb.storage.changes import ALL_COLLECTIONS, PRUNED, Change, changes_since, latest_seq
from matchdb.storage.collections import list_collections
from matchdb.storage.geometric import load_signatures, signatures_by_row_ids
from matchdb.storage.hash_load import load_hashes
from matchdb.storage.records import get_by_row_ids
from matchdb.storage.transactions import unavailable

IndexFactory = Callable[[int], HammingIndex]
log = logging.getLogger("matchdb.index")


class IndexLoading(MatchdbError):
    """The collection's index is still loading after the wait allowed."""


@dataclass
class CollectionIndex:
    """The indexes of one collection, by hash type, and whether they are ready."""

    by_kind: dict[str, HammingIndex] = field(default_factory=dict)
    geometric: GeometricIndex = field(default_factory=GeometricIndex)  # signatures, if the collection keeps them
    row_ids: RowIds = field(default_factory=RowIds)  # the live records' row ids, for allRecords and random
    state: str = "loading"
    ready: threading.Event = field(default_factory=threading.Event)
    pending: list[Change] = field(default_factory=list)  # changes seen while loading, replayed when ready
    load_seconds: float = 0.0
    error: str = ""
    failure: BaseException | None = None  # why the load failed (a database outage is a 503, not a bug)
    segment: Mapped | None = None  # the segment its trees are mapped from (None: built in this process's heap)
    compacting: bool = False  # the next segment is being written or awaited

    @property
    def size(self) -> int:
        index = self.by_kind.get("bmh1")
        return len(index) if index is not None and self.state == "ready" else 0


class IndexRegistry:
    """Blocking (SQL and CPU): call from worker threads, never from the event loop."""

    def __init__(
        self, engine: Engine, factory: IndexFactory = NumpyTreeIndex, segments: SegmentStore | None = None
    ) -> None:
        self._engine = engine
        self._factory = factory
        self.segments = segments  # None: every index is built in this process's heap
        self._lock = threading.RLock()
        self._collections: dict[str, CollectionIndex] = {}
        self._rebuilding: dict[str, CollectionIndex] = {}  # replacement indexes being built (they get changes too)
        self._seq = -1
        self._watch: Connection | None = None  # catch-up's own connection (guarded by the lock)
        self.generation = 0  # seq of the last rebuild request carried out (see ``matchdb rebuild-index``)
        self.last_rebuild_seconds: float | None = None

    def states(self) -> dict[str, CollectionIndex]:
        with self._lock:
            return dict(self._collections)

    def load_all_in_background(self) -> threading.Thread:
        """Start loading every collection's index (what a server does at start)."""

        def run() -> None:
            self.catch_up()
            with self._engine.connect() as connection:
                ids = [info.id for info in list_collections(connection)]
            if self.segments is not None:
                self.segments.sweep(set(ids))
            for collection_id in ids:
                self._ensure_loading(collection_id, background=False)

        thread = threading.Thread(target=run, name="matchdb-index-load", daemon=True)
        thread.start()
        return thread

    def get(self, collection_id: str, wait: float = 30.0) -> CollectionIndex:
        """The collection's indexes, current as of now; waits up to ``wait`` seconds for a load in progress."""
        self.catch_up()
        return self.current(collection_id, wait)

    def current(self, collection_id: str, wait: float = 30.0) -> CollectionIndex:
        """The collection's indexes as they are, without a catch-up: current as of :attr:`seq` (the caller checks
        that nothing changed since, e.g. with ``records.get_by_row_ids_as_of``); waits for a load like :meth:`get`."""
        loaded = self._ensure_loading(collection_id, background=True)
        if not loaded.ready.wait(wait):
            raise IndexLoading(f"the index of this collection is still loading (waited {wait:g} s); retry shortly")
        if loaded.error:
            down = unavailable(loaded.failure) if loaded.failure is not None else None
            raise down or MatchdbError(f"the index of this collection failed to load: {loaded.error}")
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
        """Apply every change not seen yet; returns how many there were. One indexed query when idle.

        A rebuild request starts a rebuild in the background; queries keep using the current indexes until the
        new ones are swapped in."""
        rebuilds: list[Change] = []
        with self._lock:
            try:
                applied = self._catch_up(self._watch_connection(), rebuilds)
            except DBAPIError:  # e.g. the server restarted: one retry on a fresh connection
                self.close()
                applied = self._catch_up(self._watch_connection(), rebuilds)
        metrics.caught_up()
        if rebuilds:
            threading.Thread(target=self.rebuild, args=(rebuilds,), name="matchdb-rebuild", daemon=True).start()
        return applied

    @property
    def seq(self) -> int:
        """The last change-log entry applied (-1 before the first catch-up)."""
        return self._seq

    def _watch_connection(self) -> Connection:
        """A connection kept for catch-up, in autocommit: the idle check is then one round trip (a pooled
        connection adds BEGIN and ROLLBACK, ~3x the cost), and each statement sees every commit."""
        if self._watch is None or self._watch.closed or self._watch.invalidated:
            self._watch = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._watch

    def close(self) -> None:
        """Give back the catch-up connection (at shutdown, or after an error)."""
        with self._lock:
            watch, self._watch = self._watch, None
        if watch is not None:
            try:
                watch.close()
            except DBAPIError:
                log.debug("closing the catch-up connection failed", exc_info=True)

    def _catch_up(self, connection: Connection, rebuilds: list[Change]) -> int:
        if self._seq < 0:
            self._seq = latest_seq(connection)
            self.generation = self._seq
            return 0
        start, missed = self._seq, False
        applied = 0
        while True:
            batch = changes_since(connection, self._seq)
            if not batch:
                break
            ready = []
            for change in batch:
                if change.op == PRUNED:  # entries after ``start`` were deleted unseen: the indexes cannot be trusted
                    missed = missed or (change.record_id is not None and change.record_id > start)
                    continue
                if change.op == "rebuild":
                    rebuilds.append(change)
                    continue
                if change.op == "drop":  # whatever state its indexes are in, they are gone
                    self._collections.pop(change.collection_id, None)
                    self._rebuilding.pop(change.collection_id, None)
                    if self.segments is not None:
                        self.segments.remove(change.collection_id)
                    continue
                shadow = self._rebuilding.get(change.collection_id)
                if shadow is not None:
                    shadow.pending.append(change)
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
        if missed:
            self._reload_all()
        return applied

    def _reload_all(self) -> None:
        """Load every collection afresh (queries wait for it, as at start): after changes were lost to pruning."""
        log.warning("change-log entries this server had not applied were pruned: reloading every index")
        self._rebuilding.clear()
        for collection_id in list(self._collections):
            fresh = CollectionIndex({kind: self._factory(NBITS[kind]) for kind in HASH_TYPES})
            self._collections[collection_id] = fresh
            threading.Thread(target=self._load, args=(collection_id, fresh), daemon=True).start()

    def rebuild(self, requests: list[Change]) -> None:
        """Build fresh indexes of the requested collections from the database and swap them in atomically."""
        started = time.perf_counter()
        targets: set[str] = set()
        with self._lock:
            for request in requests:
                if request.collection_id == ALL_COLLECTIONS:
                    targets.update(self._collections)
                elif request.collection_id in self._collections:
                    targets.add(request.collection_id)
            shadows = {}
            for collection_id in sorted(targets):
                shadow = CollectionIndex({kind: self._factory(NBITS[kind]) for kind in HASH_TYPES})
                self._rebuilding[collection_id] = shadow
                shadows[collection_id] = shadow
        for collection_id, shadow in shadows.items():
            self._load(collection_id, shadow, replaces=True)
        with self._lock:
            self.generation = max(self.generation, max(request.seq for request in requests))
            self.last_rebuild_seconds = time.perf_counter() - started

    def _apply(self, connection: Connection, batch: list[Change], target: CollectionIndex | None = None) -> None:
        """Apply changes to the registered indexes (or, for a load's replay, to ``target`` only)."""
        upserted = [c.record_id for c in batch if c.op == "upsert" and c.record_id is not None]
        stored = get_by_row_ids(connection, upserted) if upserted else {}
        signatures = signatures_by_row_ids(connection, upserted) if upserted else {}
        for change in batch:
            loaded = target if target is not None else self._collections.get(change.collection_id)
            if loaded is None:
                continue
            if change.op == "delete" and change.record_id is not None:
                for index in loaded.by_kind.values():
                    index.remove(change.record_id)
                loaded.geometric.remove(change.record_id)
                loaded.row_ids.remove(change.record_id)
            elif change.op == "upsert" and change.record_id is not None:
                record = stored.get(change.record_id)
                if record is None:  # deleted again later in the log
                    continue
                loaded.by_kind["bmh1"].add(record.row_id, int.from_bytes(record.bmh1, "little"))
                loaded.by_kind["phash"].add(record.row_id, int.from_bytes(record.phash, "little"))
                signature = signatures.get(record.row_id)
                if signature is not None:
                    loaded.geometric.add(record.row_id, signature)
                loaded.row_ids.add(record.row_id)

    def _load(self, collection_id: str, loaded: CollectionIndex, replaces: bool = False, newer_than: int = -1) -> None:
        """Fill the fresh indexes: mapped from a segment and caught up from the change log, else streamed from the
        database (and a segment written for the next process); then replay what changed meanwhile.

        With ``replaces`` the indexes are a rebuild's: the replay and the swap happen in one hold of the lock, so no
        catch-up can slip a change in between. ``newer_than``: a compaction wants a segment newer than that
        generation (its own)."""
        started = time.perf_counter()
        try:
            if not self._load_segment(collection_id, loaded, newer_than):
                self._load_database(collection_id, loaded)
            with self._engine.connect() as connection:  # signatures are not in segments: always from the database
                loaded.geometric.add_many(*load_signatures(connection, collection_id))
            with self._lock, self._engine.connect() as connection:
                self._apply(connection, loaded.pending, target=loaded)
                loaded.pending.clear()
                loaded.state = "ready"
                metrics.INDEX_LOADS.labels("rebuild" if replaces else "load", "ok").inc()
                if replaces and self._rebuilding.get(collection_id) is loaded:  # not dropped or superseded
                    del self._rebuilding[collection_id]
                    if collection_id in self._collections:
                        self._collections[collection_id] = loaded
        except Exception as exc:  # a failed load must not leave queries waiting forever
            if unavailable(exc) is None:
                log.exception("loading the index of collection %s failed", collection_id)
            else:  # the database is down: the next query loads it again
                log.warning("loading the index of collection %s failed: %s", collection_id, unavailable(exc))
            metrics.INDEX_LOADS.labels("rebuild" if replaces else "load", "failed").inc()
            with self._lock:
                loaded.error, loaded.failure = str(exc), exc
                loaded.state = "failed"
                registry = self._rebuilding if replaces else self._collections  # (a rebuild's old indexes stay)
                if registry.get(collection_id) is loaded:
                    del registry[collection_id]
        finally:
            loaded.load_seconds = time.perf_counter() - started
            loaded.ready.set()

    def _load_database(self, collection_id: str, loaded: CollectionIndex) -> int:
        """Stream the collection's hashes into the fresh indexes; returns the change-log position they hold (the
        load sees at least every change up to it)."""
        with self._engine.connect() as connection:
            position = latest_seq(connection)
            stored = load_hashes(connection, collection_id)
        # Into an empty index a bulk load builds the tree at once, so the first query after "ready" does not.
        # The two hash types build in parallel (numpy releases the GIL in its long loops: two cores, two builds).
        packed = {"bmh1": stored.bmh1, "phash": stored.phash}
        with ThreadPoolExecutor(len(packed), thread_name_prefix="matchdb-build") as pool:
            builds = [pool.submit(loaded.by_kind[k].bulk_load_packed, stored.keys, v) for k, v in packed.items()]
            for build in builds:
                build.result()
        loaded.row_ids.load(stored.keys)
        del stored, packed, builds
        release_free_memory()  # the load's peak is about twice the index: give the rest back
        return position

    def _load_segment(self, collection_id: str, loaded: CollectionIndex, newer_than: int) -> bool:
        """Map the collection's newest usable segment, or build it under the collection's lock (others wait for
        it, then map it) and write it; False if segments are off here (the caller builds in the heap)."""
        store = self.segments
        if store is None or not all(isinstance(i, NumpyTreeIndex) for i in loaded.by_kind.values()):
            return False
        if self._map(store, collection_id, loaded, newer_than):
            return True
        try:
            lock = store.acquire(collection_id)
        except OSError as exc:
            log.warning("index folder %s not usable (%s): indexes are built in memory", store.folder, exc)
            return False
        try:
            if self._map(store, collection_id, loaded, newer_than):
                return True
            position = self._load_database(collection_id, loaded)
            trees = {kind: index.tree for kind, index in loaded.by_kind.items() if isinstance(index, NumpyTreeIndex)}
            if store.write(collection_id, position, trees, trees["bmh1"].sorted_keys) is not None:
                self._map(store, collection_id, loaded, -1)  # the heap copy goes; if stale already, it stays
            return True
        finally:
            store.release(lock)

    def _map(self, store: SegmentStore, collection_id: str, loaded: CollectionIndex, newer_than: int) -> bool:
        """Serve the newest valid segment (newer than ``newer_than``) still covered by the change log, caught up
        with the collection's changes since its position; False (``loaded`` untouched) if there is none."""
        mapped = store.newest(collection_id, newer_than)
        if mapped is None:
            return False
        with self._engine.connect() as connection:
            changes = changes_after(connection, mapped.header.position, collection_id)
            if changes is None:
                log.info("index segment %s is stale (the change log no longer covers it)", mapped.path)
                return False
            due = self._compaction(collection_id, loaded)
            for kind, index in loaded.by_kind.items():
                assert isinstance(index, NumpyTreeIndex)
                index.load_tree(mapped.trees[kind])
                index.on_due = due
            loaded.row_ids.load_sorted(mapped.row_ids)
            loaded.segment = mapped
            self._apply(connection, changes, target=loaded)
        return True

    def _compaction(self, collection_id: str, loaded: CollectionIndex) -> Callable[[], bool]:
        """What a mapped index does when its delta or tombstones pass their share: start writing (or waiting for)
        the next segment in the background, once, and go on serving meanwhile."""

        def due() -> bool:
            if not loaded.compacting:
                loaded.compacting = True
                threading.Thread(target=self._compact, args=(collection_id, loaded), daemon=True).start()
            return True

        return due

    def _compact(self, collection_id: str, loaded: CollectionIndex) -> None:
        loaded.ready.wait()
        generation = loaded.segment.header.generation if loaded.segment is not None else -1
        with self._lock:
            if self._collections.get(collection_id) is not loaded or collection_id in self._rebuilding:
                return  # dropped, reloaded or being rebuilt meanwhile
            shadow = CollectionIndex({kind: self._factory(NBITS[kind]) for kind in HASH_TYPES})
            self._rebuilding[collection_id] = shadow
        self._load(collection_id, shadow, replaces=True, newer_than=generation)
        if shadow.state != "ready":  # e.g. the database is down: compact in this process's heap instead
            for index in loaded.by_kind.values():
                if isinstance(index, NumpyTreeIndex):
                    index.on_due = None
            loaded.compacting = False

    @property
    def records(self) -> int:
        with self._lock:
            return sum(state.size for state in self._collections.values())

    def forget(self, collection_id: str) -> None:
        with self._lock:
            self._collections.pop(collection_id, None)
