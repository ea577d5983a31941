"""Server heartbeats: which processes serve indexes, how fresh they are, and which index generation they serve."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from matchdb.storage.schema import servers


@dataclass(frozen=True)
class ServerInfo:
    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    generation: int
    rebuild_seconds: float | None
    records: int


def beat(
    connection: Connection,
    server_id: str,
    host: str,
    pid: int,
    started_at: datetime,
    generation: int,
    rebuild_seconds: float | None,
    records: int,
) -> None:
    """Insert or refresh this server's row."""
    now = datetime.now(UTC)
    values = {"heartbeat_at": now, "generation": generation, "rebuild_seconds": rebuild_seconds, "records": records}
    updated = connection.execute(update(servers).where(servers.c.id == server_id).values(**values)).rowcount
    if not updated:
        connection.execute(insert(servers).values(id=server_id, host=host, pid=pid, started_at=started_at, **values))


def live_servers(connection: Connection, fresh_within: float) -> list[ServerInfo]:
    """Servers whose last heartbeat is at most ``fresh_within`` seconds old."""
    since = datetime.now(UTC) - timedelta(seconds=fresh_within)
    rows = connection.execute(select(servers).where(servers.c.heartbeat_at >= since).order_by(servers.c.started_at))
    return [ServerInfo(*row) for row in rows]


def forget_server(connection: Connection, server_id: str) -> None:
    connection.execute(delete(servers).where(servers.c.id == server_id))
