"""Run the app under uvicorn, one process or a supervisor with several workers.

Why not ``uvicorn.run``: the listening socket is bound first, by :func:`listen`, before anything is loaded, so a
port that is taken is one plain error (uvicorn binds after the app's startup has begun loading indexes, and a
taken port then ends in a wall of tracebacks). And with ``workers > 1`` uvicorn binds with ``proto`` 0, accepted
sockets inherit it, and asyncio then skips TCP_NODELAY, so every keep-alive request after the first waits ~40 ms
for a delayed ACK (uvicorn issue 3149); :func:`listen` binds it as TCP.

Shutdown on SIGTERM (or Ctrl-C) is graceful: the listener closes (new connections are refused, not queued), idle
keep-alive connections close, requests in flight finish (up to ``drain_timeout`` seconds, then they are cancelled),
the lifespan's shutdown runs, and the command exits 0. Every answered write was committed before its answer left.
"""

from __future__ import annotations

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
from uvicorn.supervisors import Multiprocess

from matchdb import metrics

APP = "matchdb.web.app:app_from_env"
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


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor, which also closes its own copy of the listening socket when it stops: while
    any process holds it open the kernel keeps accepting connections that no worker will ever serve."""

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
                supervisor(config, target=uvicorn.Server(config).run, sockets=[listener]).run()
            else:
                supervisor(config, sockets=[listener]).run()
        return
    server = uvicorn.Server(config)
    # uvicorn raises the signal that stopped it again once it has shut down, to die of it: SIGTERM would then end
    # the process with status 143 after a clean shutdown. This handler absorbs it, so the command exits 0.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    if not server.started:  # the app failed to start: fail as uvicorn.run does
        sys.exit(STARTUP_FAILURE)
