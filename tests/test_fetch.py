"""matchdb.fetch against a real HTTP server on 127.0.0.1. No test connects anywhere else: refused addresses are
checked with an injected resolver and a network backend that fails the test if it is ever asked to connect."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpcore
import pytest
from PIL import Image

from matchdb.errors import ConfigError, MatchdbError
from matchdb.fetch import Fetcher, FetchError, refusal_reason

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
HUGE = b"x" * 64 * 1024


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the concurrency test opens 20 connections at once
    hits: Counter[str]
    answered: Counter[str]
    release: threading.Event
    other_port: int


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        self.server.hits[path] += 1
        try:
            if path == "/image.png":
                self._send(200, PNG, {"Content-Type": "image/png"})
            elif path == "/redirect":
                self._send(302, headers={"Location": "/image.png"})
            elif path == "/redirect-away":
                self._send(302, headers={"Location": f"http://127.0.0.1:{self.server.other_port}/"})
            elif path.startswith("/loop/"):
                self._send(302, headers={"Location": f"/loop/{int(path.rsplit('/', 1)[1]) + 1}"})
            elif path.startswith("/flaky/"):  # /flaky/<token>/<failures>: 500 that many times, then the image
                if self.server.hits[path] <= int(path.rsplit("/", 1)[1]):
                    self._send(500, b"oops")
                else:
                    self._send(200, PNG)
            elif path == "/host":
                self._send(200, self.headers["Host"].encode())
            elif path == "/huge":
                self._send(200, HUGE)
            elif path == "/huge-stream":  # no Content-Length: HTTP/1.0 body delimited by closing the connection
                self._send(200, HUGE, length=False)
            elif path == "/slow":  # answers only once the test releases it: a fetch that returns timed out
                self.server.release.wait(60)
                self.server.answered[path] += 1
                self._send(200, PNG)
            else:
                self._send(404, b"not found")
        except OSError:
            pass  # the client gave up (a timeout test); nothing to answer


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.hits = Counter()
    httpd.answered = Counter()
    httpd.release = threading.Event()
    httpd.other_port = _closed_port()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def port_of(server: Server) -> int:
    return int(server.server_address[1])


def base(server: Server) -> str:
    return f"http://127.0.0.1:{port_of(server)}"


def local(server: Server, **kwargs: Any) -> Fetcher:
    """A fetcher allowed to reach the test server, with tiny timeouts and backoff."""
    options: dict[str, Any] = {
        "allow": [f"127.0.0.1:{port_of(server)}"],
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "backoff": 0.01,
    }
    options.update(kwargs)
    return Fetcher(**options)


async def fetch(fetcher: Fetcher, url: str) -> bytes:
    async with fetcher:
        return await fetcher.fetch(url)


def fetch_error(fetcher: Fetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as info:
        run(fetch(fetcher, url))
    return info.value


class NoNetwork(httpcore.AsyncNetworkBackend):
    """Fails the test on any connection attempt: refused addresses must be refused before connecting."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pytest.fail(f"attempted a connection to {host}:{port}")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Recording(httpcore.AsyncNetworkBackend):
    """Connects for real (only ever to 127.0.0.1 here) and records where to."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.calls: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        assert host == "127.0.0.1", host
        self.calls.append((host, port))
        return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def resolver_of(table: dict[str, list[str]]) -> Callable[[str, int], Awaitable[Sequence[str]]]:
    async def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            pytest.fail(f"unexpected resolution of {host}")
        return table[host]

    return resolve


def offline(**kwargs: Any) -> Fetcher:
    return Fetcher(network_backend=NoNetwork(), resolver=resolver_of({}), attempts=3, backoff=0.01, **kwargs)


# --- success paths ---


def test_fetches_image(server: Server) -> None:
    assert run(fetch(local(server), f"{base(server)}/image.png")) == PNG


def test_follows_redirect(server: Server) -> None:
    assert run(fetch(local(server), f"{base(server)}/redirect")) == PNG


def test_allowed_network_entry(server: Server) -> None:
    assert run(fetch(local(server, allow=["127.0.0.0/8"]), f"{base(server)}/image.png")) == PNG


def test_connects_to_vetted_ip_with_original_host_header(server: Server) -> None:
    backend = Recording()
    fetcher = local(server, resolver=resolver_of({"images.test": ["127.0.0.1"]}), network_backend=backend)
    body = run(fetch(fetcher, f"http://images.test:{port_of(server)}/host"))
    assert body == f"images.test:{port_of(server)}".encode()
    assert backend.calls == [("127.0.0.1", port_of(server))]


def test_concurrent_fetches_share_one_fetcher(server: Server) -> None:
    async def many() -> list[bytes]:
        async with local(server) as fetcher:
            return await asyncio.gather(*(fetcher.fetch(f"{base(server)}/image.png") for _ in range(20)))

    assert run(many()) == [PNG] * 20


# --- redirects, retries, limits ---


def test_redirect_to_other_loopback_port_refused(server: Server) -> None:
    error = fetch_error(local(server), f"{base(server)}/redirect-away")
    assert str(error) == "URL not allowed: 127.0.0.1 is a loopback address"
    assert error.attempts == 1


def test_too_many_redirects(server: Server) -> None:
    error = fetch_error(local(server, max_redirects=3), f"{base(server)}/loop/0")
    assert str(error) == "too many redirects (max 3)"
    assert server.hits["/loop/3"] == 1 and server.hits["/loop/4"] == 0


def test_retries_5xx_then_succeeds(server: Server) -> None:
    path = "/flaky/a/2"
    assert run(fetch(local(server, attempts=3), f"{base(server)}{path}")) == PNG
    assert server.hits[path] == 3


def test_5xx_exhausts_attempts(server: Server) -> None:
    path = "/flaky/b/9"
    url = f"{base(server)}{path}"
    error = fetch_error(local(server, attempts=2), url)
    assert str(error) == f"Unable to download image from '{url}', Attempts: 2"
    assert server.hits[path] == 2


def test_down_server_is_retried(server: Server) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}/image.png"
    error = fetch_error(local(server, allow=[f"127.0.0.1:{port}"]), url)
    assert str(error) == f"Unable to download image from '{url}', Attempts: 3"
    assert error.attempts == 3


def test_404_not_retried(server: Server) -> None:
    url = f"{base(server)}/missing"
    error = fetch_error(local(server), url)
    assert str(error) == f"HTTP 404 from '{url}'"
    assert error.attempts == 1 and server.hits["/missing"] == 1


@pytest.mark.parametrize("path", ["/huge", "/huge-stream"])
def test_too_large(server: Server, path: str) -> None:
    error = fetch_error(local(server, max_bytes=1000), f"{base(server)}{path}")
    assert str(error) == "image too large: more than 1000 bytes"
    assert server.hits[path] == 1


def test_read_timeout(server: Server) -> None:
    """The read timeout fired, on every attempt: both requests reached the server, and the fetch gave up while the
    server still held both unanswered (it answers only when released). Events, not a stopwatch."""
    url = f"{base(server)}/slow"
    try:
        error = fetch_error(local(server, read_timeout=0.1, attempts=2), url)
        assert str(error) == f"Unable to download image from '{url}', Attempts: 2"
        assert server.hits["/slow"] == 2 and server.answered["/slow"] == 0
    finally:
        server.release.set()


# --- refusals that never touch the network ---


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "URL scheme must be http or https"),
        ("ftp://example.com/a.png", "URL scheme must be http or https"),
        ("data:image/png;base64,AAAA", "URL scheme must be http or https"),
        ("not a url", "URL scheme must be http or https"),
        ("http:///a.png", "URL has no host: 'http:///a.png'"),
        ("http://10.1.2.3/", "URL not allowed: 10.1.2.3 is a private address"),
        ("http://192.168.1.1/", "URL not allowed: 192.168.1.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data", "URL not allowed: 169.254.169.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "URL not allowed: fd00:ec2::254 is a cloud metadata address"),
        ("http://100.100.100.200/", "URL not allowed: 100.100.100.200 is a cloud metadata address"),
        ("http://[::ffff:127.0.0.1]/", "URL not allowed: ::ffff:127.0.0.1 is a loopback address"),
        ("http://[fe80::1]/", "URL not allowed: fe80::1 is a link-local address"),
        ("http://[::1]:8080/", "URL not allowed: ::1 is a loopback address"),
        ("http://0.0.0.0/", "URL not allowed: 0.0.0.0 is an unspecified address"),
        ("http://[::]/", "URL not allowed: :: is an unspecified address"),
        ("http://224.0.0.1/", "URL not allowed: 224.0.0.1 is a multicast address"),
        ("http://255.255.255.255/", "URL not allowed: 255.255.255.255 is a reserved address"),
        ("http://100.64.0.1/", "URL not allowed: 100.64.0.1 is a non-public address"),
        ("http://[fc00::1]/", "URL not allowed: fc00::1 is a private address"),
        ("http://[2002:7f00:1::]/", "URL not allowed: 2002:7f00:1:: is a loopback address"),
        ("http://[64:ff9b::a9fe:a9fe]/", "URL not allowed: 64:ff9b::a9fe:a9fe is a cloud metadata address"),
        ("http://127.0.0.1:1/", "URL not allowed: 127.0.0.1 is a loopback address"),
    ],
)
def test_refused_without_connecting(url: str, message: str) -> None:
    error = fetch_error(offline(), url)
    assert str(error) == message
    assert error.attempts == 1


def test_loopback_port_not_in_allow_list(server: Server) -> None:
    fetcher = local(server, network_backend=NoNetwork())
    error = fetch_error(fetcher, f"http://127.0.0.1:{server.other_port}/")
    assert str(error) == "URL not allowed: 127.0.0.1 is a loopback address"


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [(["127.0.0.1"], "loopback"), (["93.184.216.34", "10.0.0.1"], "private"), (["::ffff:169.254.1.1"], "link-local")],
)
def test_name_resolving_to_refused_address(addresses: list[str], reason: str) -> None:
    fetcher = Fetcher(network_backend=NoNetwork(), resolver=resolver_of({"evil.example": addresses}))
    error = fetch_error(fetcher, "http://evil.example/a.png")
    assert str(error) == f"URL not allowed: evil.example resolves to a {reason} address"


def test_broad_allow_does_not_open_metadata() -> None:
    error = fetch_error(offline(allow=["169.254.0.0/16"]), "http://169.254.169.254/")
    assert "cloud metadata" in str(error)


def test_refusal_reason_public_addresses() -> None:
    import ipaddress

    assert refusal_reason(ipaddress.ip_address("93.184.216.34")) is None
    assert refusal_reason(ipaddress.ip_address("2606:4700::1111")) is None


@pytest.mark.parametrize("entry", ["localhost:80", "127.0.0.1:99999", "[::1]", "10.0.0.0/33", "nonsense"])
def test_bad_allow_entry(entry: str) -> None:
    with pytest.raises(ConfigError):
        Fetcher(allow=[entry])


def test_fetch_error_is_matchdb_error() -> None:
    assert issubclass(FetchError, MatchdbError)
