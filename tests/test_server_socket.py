"""The listener ``matchdb serve`` binds: accepted connections must get TCP_NODELAY, and a taken port is one line.

Without TCP_NODELAY, every keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn
issue 3149: its supervisor binds the socket with ``proto`` 0, and asyncio only sets TCP_NODELAY for ``IPPROTO_TCP``).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from matchdb.web.server import STARTUP_FAILURE, PortInUse, listen
from tests.servers import run_matchdb


async def nodelay_of_accepted(listener: socket.socket) -> int:
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(handle, sock=listener)
    host, port = listener.getsockname()[:2]
    _, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(accepted, 10)
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


def test_the_bound_listener_gives_accepted_connections_tcp_nodelay() -> None:
    listener = listen("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(nodelay_of_accepted(listener)) != 0


def test_a_taken_port_is_one_line_and_nothing_is_loaded(tmp_path: Path) -> None:
    """Issue 26: a second ``matchdb serve`` on a busy port printed 3 to 6 tracebacks (the bind error, then index
    loads failing during shutdown). Now: one line naming the port and how to choose another, before the database
    is even opened (it is not created)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PortInUse):
            listen("127.0.0.1", port)
        database = tmp_path / "db.sqlite3"
        for workers in ("1", "2"):
            result = run_matchdb(
                ["serve", "--port", str(port), "--workers", workers], {"MATCHDB_DATABASE_URL": f"sqlite:///{database}"}
            )
            assert result.returncode == STARTUP_FAILURE
            assert result.stderr.strip().splitlines() == [
                f"matchdb serve: port {port} on 127.0.0.1 is already in use (another `matchdb serve`?); stop it, or "
                f"choose another port: matchdb serve --port {port + 1}"
            ]
            assert not database.exists()
