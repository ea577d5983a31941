"""A connection that reaches a server while its shutdown begins (tests/test_shutdown.py, benchmarks/bench_shutdown.py).

The server (real uvicorn, in a thread, on 127.0.0.1) is made to stall its event loop for a moment, as a busy worker
does; meanwhile it is told to stop and a new client connects (the kernel accepts it from the listen queue) and
sends a request. When the loop runs again it accepts that connection first and begins its shutdown second, before
the connection is handed to uvicorn: the order is fixed by asyncio (ready I/O callbacks run before due timers, and
the new connection is set up one loop turn later), not by timing. The client then keeps sending requests on its
connection, as a keep-alive client under steady load does, for as long as the server answers them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from tests.servers import LOOPBACK, free_port

TICK = 0.25  # more than uvicorn's main-loop tick (0.1 s)
REQUEST = b"POST /v2/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class LateClient:
    """What the late client saw: the status and ``Connection`` header of each answer, whether the server closed the
    connection, and the seconds from the stop to the server's exit."""

    statuses: list[int] = field(default_factory=list)
    connection_headers: list[str] = field(default_factory=list)
    closed_by_server: bool = False
    exit_seconds: float = 0.0


def _read_answer(sock: socket.socket) -> tuple[int, str] | None:
    """One HTTP answer's status and ``Connection`` header (None: the connection was closed or reset first)."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
    except OSError:
        return None
    return int(lines[0].split()[1]), headers.get("connection", "")


def late_client_run(server: uvicorn.Server, port: int, max_requests: int) -> LateClient:
    """Run ``server`` (configured on ``port``) in a thread, stop it while a new client connects, and let that client
    send up to ``max_requests`` requests on its connection; returns what it saw once the server has exited."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.serve()), name="late-server")
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start")
        time.sleep(0.02)
    stalled, release = threading.Event(), threading.Event()

    def stall() -> None:
        stalled.set()
        release.wait(10)
        time.sleep(TICK)  # so that uvicorn's main-loop tick, which begins the shutdown, is due when the loop resumes

    loop.call_soon_threadsafe(stall)
    stalled.wait(10)
    seen = LateClient()
    stopped_at = time.monotonic()
    server.should_exit = True  # what uvicorn's SIGTERM handler does
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.sendall(REQUEST)
        release.set()
        for sent in range(max_requests):
            if sent:
                try:
                    sock.sendall(REQUEST)
                except OSError:
                    seen.closed_by_server = True
                    break
            answer = _read_answer(sock)
            if answer is None:
                seen.closed_by_server = True
                break
            seen.statuses.append(answer[0])
            seen.connection_headers.append(answer[1])
    thread.join(120)
    seen.exit_seconds = time.monotonic() - stopped_at
    loop.close()
    return seen


def server_config(app: object, drain_timeout: int) -> tuple[uvicorn.Config, int]:
    """A uvicorn config for ``app`` on a free loopback port (and that port)."""
    port = free_port()
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=LOOPBACK,
        port=port,
        timeout_graceful_shutdown=drain_timeout,
        log_level="warning",
        access_log=False,
    )
    return config, port
