"""A server process's heartbeat: every few seconds it catches up from the change log (so rebuild requests are
carried out even when no query arrives) and reports its index generation, for ``matchdb rebuild-index``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime

from sqlalchemy import Engine

from matchdb import metrics
from matchdb.hashing import HASH_TYPES
from matchdb.service.indexes import IndexRegistry
from matchdb.storage.changes import latest_seq
from matchdb.storage.servers import beat, forget_server
from matchdb.storage.transactions import unavailable

log = logging.getLogger("matchdb.heartbeat")


class Heartbeat:
    def __init__(self, engine: Engine, registry: IndexRegistry, server_id: str, interval: float = 2.0) -> None:
        self._engine = engine
        self._registry = registry
        self._server_id = server_id
        self._interval = interval
        self._started_at = datetime.now(UTC)
        self._stop = threading.Event()
        self._reported: set[str] = set()  # collections whose index gauges this process has set
        self._thread = threading.Thread(target=self._run, name="matchdb-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove this server's row (a crashed server's row simply goes stale)."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            with self._engine.begin() as connection:
                forget_server(connection, self._server_id)
        except Exception:  # shutting down: the row will go stale on its own
            log.warning("could not remove the heartbeat row of server %s", self._server_id)

    def beat_once(self) -> None:
        with self._engine.connect() as connection:
            behind = latest_seq(connection) - self._registry.seq if self._registry.seq >= 0 else 0
        metrics.CHANGELOG_LAG.set(max(behind, 0))
        self._registry.catch_up()
        self._report_indexes()
        with self._engine.begin() as connection:
            beat(
                connection,
                self._server_id,
                socket.gethostname(),
                os.getpid(),
                self._started_at,
                self._registry.generation,
                self._registry.last_rebuild_seconds,
                self._registry.records,
            )

    def _report_indexes(self) -> None:
        """Index gauges of this worker; a collection gone since the last beat is reported as empty."""
        states = self._registry.states()
        for collection_id in self._reported - states.keys():
            for kind in HASH_TYPES:
                metrics.INDEX_RECORDS.labels(collection_id, kind).set(0)
                metrics.INDEX_MEMORY.labels(collection_id, kind).set(0)
        for collection_id, state in states.items():
            for kind, index in state.by_kind.items():
                ready = state.state == "ready"
                metrics.INDEX_RECORDS.labels(collection_id, kind).set(len(index) if ready else 0)
                metrics.INDEX_MEMORY.labels(collection_id, kind).set(getattr(index, "nbytes", 0) if ready else 0)
        self._reported = set(states)

    def _run(self) -> None:
        while True:
            try:
                self.beat_once()
            except Exception as exc:  # the database may be briefly unreachable: keep beating
                if unavailable(exc) is None:
                    log.exception("heartbeat of server %s failed", self._server_id)
                else:  # an outage: one line every beat, not a traceback
                    log.warning("heartbeat of server %s: %s", self._server_id, str(exc).split("\n", 1)[0])
            if self._stop.wait(self._interval):
                return
