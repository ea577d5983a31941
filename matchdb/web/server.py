"""Run the app under uvicorn, one process or a supervisor with several workers.

Why not ``uvicorn.run``: the listening socket is bound first, by :func:`listen`, before anything is loaded, so a
port that is taken is one plain error (uvicorn binds after the app's startup has begun loading indexes, and a
taken port then ends in a wall of tracebacks). And with ``workers > 1`` uvicorn binds with ``proto`` 0, accepted
sockets inherit it, and asyncio then skips TCP_NODELAY, so every keep-alive request after the first waits ~40 ms
for a delayed ACK (uvicorn issue 3149); :func:`listen` binds it as TCP.

Shutdown on SIGTERM (or Ctrl-C) is graceful: the listener closes (new connections are refused, not queued), idle
keep-alive connections close, requests in flight finish (up to ``drain_timeout`` seconds, then they are cancelled),
the lifespan's shutdown runs, and the command exits 0. Every answered write was committed before its answer left.

Why :class:`DrainingServer`: uvicorn asks each connection it knows at the moment its shutdown begins to close once
its current request is answered, but a connection that the event loop had accepted and not yet handed to uvicorn
then (a window of one or two loop turns, wide on a busy worker) is never asked: it keeps serving its client's
keep-alive requests until the drain timeout, whose cancellations answer 503. Once stopping, every answer therefore
says ``Connection: close`` (so the client opens a new connection, which goes to a live server), and the drain
closes late connections as uvicorn closes the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess, multiprocess

from matchdb import metrics

APP = "matchdb.web.app:app_from_env"
SWEEP_SECONDS = 0.05  # how often the drain looks for connections uvicorn's shutdown did not see
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start (the port taken, the app failing)


class PortInUse(OSError):
    """The address to serve is taken (another server, often another ``matchdb serve``)."""


def listen(host: str, port: int) -> socket.socket:
    """The bound listener for ``host:port``, labelled TCP (accepted connections then get TCP_NODELAY) and
    inheritable (uvicorn's workers serve it). Raises :class:`PortInUse` when the address is taken."""
    family, kind, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(exc.errno, f"{host}:{port} is already in use") from exc
        raise
    sock.set_inheritable(True)
    return sock


class DrainingServer(uvicorn.Server):
    """uvicorn's server whose shutdown also ends the connections its own shutdown does not know (module docstring)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.config.loaded_app = CloseWhenStopping(self.config.loaded_app, self)
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        sweeper = asyncio.ensure_future(self._close_late_connections())
        try:
            await super().shutdown(sockets)
        finally:
            sweeper.cancel()

    async def _close_late_connections(self) -> None:
        """Ask every connection that appears during the drain, once, to close when idle: one sweep after it was first
        seen, so that a request its client had already sent is read and answered (with ``Connection: close``)."""
        known = {id(connection) for connection in self.server_state.connections}  # uvicorn asks these itself
        seen: set[int] = set()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for connection in list(self.server_state.connections):
                key = id(connection)
                if key in seen and key not in known:
                    known.add(key)
                    connection.shutdown()
                seen.add(key)


class CloseWhenStopping:
    """ASGI wrapper: once ``server`` is stopping, every answer carries ``Connection: close`` (uvicorn then closes the
    connection after it, and the client does not send its next request there)."""

    def __init__(self, app: ASGIApp, server: uvicorn.Server) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.server.should_exit:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class DrainingProcess(multiprocess.Process):
    """A worker process of uvicorn's supervisor that serves with :class:`DrainingServer`."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = DrainingServer(config=self.config)
        return self._server


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also closes its own copy of the listening socket when it stops: while
    any process holds it open the kernel keeps accepting connections that no worker will ever serve. Its workers
    serve with :class:`DrainingServer`: uvicorn's supervisor names its worker class as a module global, replaced
    here while this supervisor runs (uvicorn has no setting for it)."""

    def run(self) -> None:
        original = multiprocess.Process
        multiprocess.Process = DrainingProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = original  # type: ignore[misc]

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def keep_subprocess_alive(self) -> None:
        """uvicorn's restart of dead workers; a worker that died without its shutdown also leaves the live gauges
        of ``/metrics`` (its counters stay in the sums)."""
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                metrics.worker_exited(pid)


@contextlib.contextmanager
def metrics_folder() -> Iterator[None]:
    """A fresh folder, owned by this supervisor, where the workers keep their metrics (prometheus-client's
    multiprocess mode: :mod:`matchdb.metrics`), removed when serving ends. An operator's own
    ``PROMETHEUS_MULTIPROC_DIR`` is used as it is (emptying it between runs is then theirs to do)."""
    if os.environ.get(metrics.MULTIPROC_ENV):
        yield
        return
    folder = tempfile.mkdtemp(prefix="matchdb-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = folder  # inherited by the workers, which are started after this
    try:
        yield
    finally:
        os.environ.pop(metrics.MULTIPROC_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def run(listener: socket.socket, workers: int, drain_timeout: float = 30.0) -> None:
    """Serve on ``listener`` (from :func:`listen`) until SIGTERM or SIGINT; with ``workers`` > 1 a supervisor
    restarts workers that die."""
    host, port = listener.getsockname()[:2]
    config = uvicorn.Config(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        timeout_graceful_shutdown=math.ceil(drain_timeout),
        access_log=False,  # the app writes its own (matchdb.web.observe), with the request_id
    )
    # uvicorn says where it listens only when it binds the socket itself: say it here, in its words.
    shown = f"[{host}]" if listener.family == socket.AF_INET6 else host
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", shown, port)
    if workers > 1:
        supervisor: Any = Supervisor  # older uvicorn releases (the pyproject allows >= 0.30) also take the target
        with metrics_folder():
            if "target" in inspect.signature(Multiprocess).parameters:
                supervisor(config, target=DrainingServer(config).run, sockets=[listener]).run()
            else:
                supervisor(config, sockets=[listener]).run()
        return
    server = DrainingServer(config)
    # uvicorn raises the signal that stopped it again once it has shut down, to die of it: SIGTERM would then end
    # the process with status 143 after a clean shutdown. This handler absorbs it, so the command exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    if not server.started:  # the app failed to start: fail as uvicorn.run does
        sys.exit(STARTUP_FAILURE)
