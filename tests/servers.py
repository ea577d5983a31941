"""Servers for API tests, all on 127.0.0.1: a local image server (thread) and a real ``matchdb serve`` (subprocess).

Nothing here listens on or connects to anything but loopback, except that ``run_matchdb_server(host="0.0.0.0")``
binds every interface (for the ``--insecure-open`` test) while still being reached through 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"
SERVER_START_TIMEOUT = 60.0  # a loaded 2-core machine starting 2 workers (and their hashing kernels) can take 20 s


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


closed_port = free_port  # the same thing, named for what tests use it for: a port nothing listens on


# --- the image server --------------------------------------------------------------------------------------------


@dataclass
class ImageServer:
    """A running local image server: where it is, and how often each path was requested."""

    port: int
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def allow(self) -> str:
        """The ``MATCHDB_FETCH_ALLOW`` entry that opens this server to matchdb's SSRF guard."""
        return f"{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    state: ImageServer
    images: Mapping[str, bytes]
    redirects: Mapping[str, str]
    delays: Mapping[str, float]
    together: frozenset[str]
    barrier: threading.Barrier | None


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.state.hits[path] += 1
        try:
            delay = self.server.delays.get(path)
            if delay:
                time.sleep(delay)
            if path in self.server.together and self.server.barrier is not None:
                try:
                    self.server.barrier.wait()
                except threading.BrokenBarrierError:
                    self._send(503, b"these downloads never overlapped", {"Content-Type": "text/plain"})
                    return
            if path in self.server.images:
                kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
                self._send(200, self.server.images[path], {"Content-Type": kind})
            elif path in self.server.redirects:
                self._send(302, b"", {"Location": self.server.redirects[path]})
            else:
                self._send(404, b"not found", {"Content-Type": "text/plain"})
        except OSError:
            pass  # the client went away


@contextlib.contextmanager
def image_server(
    images: Mapping[str, bytes],
    redirects: Mapping[str, str] | None = None,
    delays: Mapping[str, float] | None = None,
    together: Collection[str] = (),
) -> Iterator[ImageServer]:
    """Serve ``images`` (path -> bytes) on 127.0.0.1 at an ephemeral port, in a thread.

    ``redirects`` maps paths to a ``Location`` (answered with 302), ``delays`` maps paths to seconds to wait before
    answering; every other path is a 404. The server handles requests concurrently. The paths ``together`` are
    answered only once a request for each of them is being handled at the same time (a barrier, not a clock): a
    client that fetches them one after another gets 503s after a minute, however fast or slow the machine.
    """
    httpd = _HTTPServer((LOOPBACK, 0), _Handler)
    state = ImageServer(port=int(httpd.server_address[1]))
    httpd.state = state
    httpd.images = dict(images)
    httpd.redirects = dict(redirects or {})
    httpd.delays = dict(delays or {})
    httpd.together = frozenset(together)
    httpd.barrier = threading.Barrier(len(httpd.together), timeout=60) if httpd.together else None
    thread = threading.Thread(target=httpd.serve_forever, name="image-server", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- a real matchdb server ---------------------------------------------------------------------------------------


def matchdb_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a matchdb subprocess: ours without any ``MATCHDB_*`` variable, plus ``env``."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("MATCHDB_")}
    base.update(env)
    return base


def run_matchdb(args: Sequence[str], env: Mapping[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the ``matchdb`` CLI (``python -m matchdb ARGS``) to completion, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "matchdb", *args],
        env=matchdb_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn's workers included), then SIGKILL whatever is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their parent
    if process.poll() is None:
        process.wait(timeout=5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class ServerFailedToStart(AssertionError):
    pass


@dataclass
class RunningServer:
    """A ``matchdb serve`` subprocess started by :func:`matchdb_server`: its URL, process and combined output."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the server's whole process group (no shutdown at all: a crash) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextlib.contextmanager
def run_matchdb_server(
    env: Mapping[str, str],
    workers: int = 1,
    *,
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    timeout: float = SERVER_START_TIMEOUT,
) -> Iterator[str]:
    """Run ``python -m matchdb serve --port <free> --workers N`` and yield its base URL (always on 127.0.0.1).

    The database is a fresh SQLite file in a temporary folder unless ``env`` names one
    (``MATCHDB_DATABASE_URL``). Waits for ``GET /healthz``; on failure the server's stderr is in the error.
    At exit the server gets SIGTERM, then SIGKILL if it lingers.
    """
    with matchdb_server(env, workers, host=host, extra_args=extra_args, timeout=timeout) as server:
        yield server.url


@contextlib.contextmanager
def matchdb_server(
    env: Mapping[str, str],
    workers: int = 1,
    *,
    host: str = LOOPBACK,
    extra_args: Sequence[str] = (),
    timeout: float = SERVER_START_TIMEOUT,
) -> Iterator[RunningServer]:
    """:func:`run_matchdb_server`, yielding the :class:`RunningServer` (for tests that kill or inspect it). The
    server runs in its own process group (its pid is the group id), workers included."""
    with tempfile.TemporaryDirectory(prefix="matchdb-server-") as tmp:
        full_env = {"MATCHDB_DATABASE_URL": f"sqlite:///{Path(tmp) / 'db.sqlite3'}", **env}
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        log_path = Path(tmp) / "stderr.log"
        command = [sys.executable, "-m", "matchdb", "serve", "--host", host, "--port", str(port)]
        command += ["--workers", str(workers), *extra_args]
        with log_path.open("wb") as log:  # a file, not a pipe: nobody reads a pipe while the server runs
            process = subprocess.Popen(
                command,
                env=matchdb_env(full_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so _stop reaches the workers too
            )
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if process.poll() is not None:
                    raise ServerFailedToStart(
                        f"matchdb serve exited with {process.returncode}:\n{log_path.read_text(errors='replace')}"
                    )
                if time.monotonic() > deadline:
                    raise ServerFailedToStart(
                        f"matchdb serve not healthy after {timeout} s:\n{log_path.read_text(errors='replace')}"
                    )
                time.sleep(0.05)
            yield RunningServer(url, process, log_path)
        finally:
            _stop(process)
