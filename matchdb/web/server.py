"""Run the app under uvicorn, one process or a supervisor with several workers.

Why not ``uvicorn.run``: with ``workers > 1`` uvicorn binds the listening socket itself with ``proto`` 0, accepted
sockets inherit it, and asyncio then skips TCP_NODELAY, so every keep-alive request after the first waits ~40 ms
for a delayed ACK (uvicorn issue 3149). :class:`TcpConfig` re-labels the listener as TCP.
"""

from __future__ import annotations

import contextlib
import inspect
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

APP = "matchdb.web.app:app_from_env"
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start (e.g. the port is taken)


class TcpConfig(uvicorn.Config):
    """uvicorn's config whose bound TCP listener says it is TCP, so accepted connections get TCP_NODELAY."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
            sock.set_inheritable(True)
        return sock


def run(host: str, port: int, workers: int) -> None:
    """Serve until interrupted; with ``workers`` > 1 a supervisor restarts workers that die."""
    config = TcpConfig(APP, factory=True, host=host, port=port, workers=workers)
    if workers > 1:
        supervisor: Any = Multiprocess  # older uvicorn releases (the pyproject allows >= 0.30) also take the target
        if "target" in inspect.signature(Multiprocess).parameters:
            supervisor(config, target=uvicorn.Server(config).run, sockets=[config.bind_socket()]).run()
        else:
            supervisor(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:  # e.g. the port is taken: fail as uvicorn.run does
        sys.exit(STARTUP_FAILURE)
