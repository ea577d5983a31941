"""A server process's heartbeat: every few seconds it catches up from the change log (so rebuild requests are
carried out even when no query arrives) and reports its index generation, for ``matchdb rebuild-index``."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime

from sqlalchemy import Engine

from matchdb.service.indexes import IndexRegistry
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
        self._registry.catch_up()
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
