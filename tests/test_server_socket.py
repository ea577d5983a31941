"""The listener ``matchdb serve --workers N`` binds: accepted connections must get TCP_NODELAY.

Without it, every keep-alive request after the first waits ~40 ms for the client's delayed ACK (uvicorn issue
3149: its supervisor binds the socket with ``proto`` 0, and asyncio only sets TCP_NODELAY for ``IPPROTO_TCP``).
"""

from __future__ import annotations

import asyncio
import socket

from matchdb.web.server import APP, TcpConfig


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
    listener = TcpConfig(APP, factory=True, host="127.0.0.1", port=0, workers=2).bind_socket()
    assert listener.proto == socket.IPPROTO_TCP
    assert asyncio.run(nodelay_of_accepted(listener)) != 0
