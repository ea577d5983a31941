"""Download the bytes behind an image record's ``_url``: the only code in matchdb that opens network connections.

The service fetches URLs chosen by its callers, so every fetch is a potential server-side request forgery: a URL
(or a redirect, or a DNS answer) pointing at loopback, the private network or a cloud metadata endpoint would let a
caller read what only the server can reach. The design puts the guard where it cannot be bypassed:

* One shared ``httpx.AsyncClient`` per :class:`Fetcher` (connection pooling across concurrent fetches) whose
  transport is a thin adapter over an ``httpcore.AsyncConnectionPool`` built with :class:`_GuardedBackend` as its
  network backend. httpcore asks that backend for every new TCP connection with the URL's host name;
  the backend resolves the name itself (the injectable resolver), refuses the host if *any* address is refused,
  and then connects to the vetted IP literal, never to the name, so a second DNS answer cannot differ from the one
  checked (DNS rebinding). httpcore still sends the original ``Host`` header and uses the original name for TLS SNI
  and certificate verification, because it only delegates the socket, not the protocol.
* Redirects are followed here, not by httpx (``follow_redirects=False``), one hop at a time with the scheme re-checked;
  each hop to a new origin opens a new connection and therefore passes through the backend's check again.
* ``trust_env=False``: an ``HTTP_PROXY`` from the environment would make httpx mount an unguarded proxy transport.
* Address classification uses the stdlib ``ipaddress`` flags (``is_global``, ``is_loopback``...), unwrapping
  IPv4-mapped, 6to4, Teredo and NAT64 IPv6 forms first, plus a short list of cloud metadata addresses.
  ``allow`` lets the operator open exact ``ip:port`` pairs or networks (a local image store, the test server);
  a whole network never opens a metadata address, only an entry naming that exact address does.

Transient failures (connection errors, timeouts, HTTP 5xx, 408, 429) are retried with a short backoff; refusals,
bad URLs, other 4xx and oversized bodies are final at once. The messages of :class:`FetchError` are user-facing: the
API shows them after "Error Loading Image: ".
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import httpcore
import httpx

from matchdb.errors import ConfigError, MatchdbError

__all__ = ["FetchError", "Fetcher", "Resolver", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Async ``(host, port) -> IP address strings``; injectable so tests (and operators) control DNS."""

MIB = 1024 * 1024

# Cloud metadata endpoints, refused even inside an allowed network: AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address the translator will reach.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_STATUSES = frozenset({408, 429})


class FetchError(MatchdbError):
    """A URL could not be downloaded; the message is shown to the API user as is.

    ``attempts`` is how many tries were made (1 for errors that are never retried); ``cause`` is a short label
    for metrics: invalid_url, blocked, http_status, too_large, redirects or unreachable.
    """

    def __init__(self, message: str, attempts: int = 1, cause: str = "unreachable") -> None:
        super().__init__(message)
        self.attempts = attempts
        self.cause = cause


class _Transient(Exception):
    """A failure worth another try (a 5xx, 408 or 429 answer); never escapes :meth:`Fetcher.fetch`."""


# Exceptions of the transport layer that mean "the network or the server hiccupped", hence retryable.
_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    _Transient,
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpx.TransportError,
)


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the event loop's getaddrinfo (runs in a thread, so it does not block other fetches)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address will actually reach (mapped, 6to4, Teredo client/server, NAT64)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def refusal_reason(ip: IPAddress) -> str | None:
    """Why the SSRF guard refuses ``ip`` (e.g. "loopback"), or None if it is a public unicast address."""
    if ip in _METADATA:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(ip):
            reason = refusal_reason(inner)
            if reason is not None:
                return reason
    # Ordered from most to least specific, so the message names the real category (127.0.0.1 is also "private").
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-public"
    return None


@dataclass(frozen=True)
class _Allowance:
    """One parsed ``allow`` entry: a network, optionally restricted to one port."""

    network: IPNetwork
    port: int | None

    def permits(self, ip: IPAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if ip not in self.network:
            return False
        # A broad network (say a CGNAT range) must not silently open the metadata endpoint inside it.
        return ip not in _METADATA or self.network.num_addresses == 1


def _parse_allow(entry: str) -> _Allowance:
    """``10.0.0.0/8``, ``10.1.2.3``, ``127.0.0.1:8123`` or ``[::1]:8080``; ConfigError on anything else."""
    text = entry.strip()
    try:
        if "/" in text:
            return _Allowance(ipaddress.ip_network(text, strict=False), None)
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError("expected [ipv6]:port")
            return _Allowance(ipaddress.ip_network(host), _parse_port(port))
        if text.count(":") == 1:
            host, _, port = text.partition(":")
            return _Allowance(ipaddress.ip_network(host), _parse_port(port))
        return _Allowance(ipaddress.ip_network(text), None)
    except ValueError as exc:
        raise ConfigError(
            f"invalid fetch allow entry {entry!r}: expected an IP:port, [IPv6]:port or a CIDR network ({exc})"
        ) from None


def _parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return port


def _normalise(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address connects to its IPv4 address, so allow entries should match it as such."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Network backend that resolves and vets the host, then connects only to a vetted IP literal."""

    def __init__(self, resolver: Resolver, allow: Sequence[_Allowance], inner: httpcore.AsyncNetworkBackend) -> None:
        self._resolver = resolver
        self._allow = tuple(allow)
        self._inner = inner

    async def vet(self, host: str, port: int, timeout: float | None) -> list[str]:
        """The addresses of ``host`` to connect to; FetchError if any of them is refused."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [host]
        else:
            try:
                async with asyncio.timeout(timeout):
                    addresses = list(await self._resolver(host, port))
            except TimeoutError:
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            if not addresses:
                raise httpcore.ConnectError(f"{host} has no addresses")
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise FetchError(f"URL not allowed: {host} resolves to an invalid address", cause="blocked") from None
            if any(rule.permits(_normalise(ip), port) for rule in self._allow):
                continue
            reason = refusal_reason(ip)
            if reason is not None:
                article = "an" if reason[0] in "aeiou" else "a"
                where = f"is {article}" if literal is not None else f"resolves to {article}"
                raise FetchError(f"URL not allowed: {host} {where} {reason} address", cause="blocked")
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.vet(host, port, timeout)
        last: Exception | None = None
        for address in addresses:  # every one was vetted: try them in order, like getaddrinfo users do
            try:
                return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise FetchError("URL not allowed: unix sockets", cause="blocked")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _BodyStream(httpx.AsyncByteStream):
    """Hands httpcore's response body to httpx unchanged (httpx only needs an async iterable with aclose)."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _GuardedTransport(httpx.AsyncBaseTransport):
    """httpx transport over an httpcore pool that uses the guarded backend; only public httpx/httpcore API."""

    def __init__(self, backend: _GuardedBackend) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)  # an async pool always streams asynchronously
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_BodyStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _check_url(url: httpx.URL | str) -> httpx.URL:
    """Parse and check what can be checked without the network: a valid http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise FetchError(f"invalid URL: '{url}'", cause="invalid_url") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError("URL scheme must be http or https", cause="invalid_url")
    if not parsed.host:
        raise FetchError(f"URL has no host: '{url}'", cause="invalid_url")
    return parsed


class Fetcher:
    """Downloads image URLs safely; share one instance (and its connection pool) across concurrent fetches."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_bytes: int = 20 * MIB,
        max_redirects: int = 5,
        attempts: int = 3,
        allow: Sequence[str] = (),
        resolver: Resolver | None = None,
        backoff: float = 0.2,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        """``allow`` opens ``ip:port`` pairs or CIDR networks despite the SSRF guard (ConfigError if malformed).

        ``backoff`` is the first retry delay (doubling after); ``network_backend`` opens the vetted connections
        (tests inject one that refuses to touch the network).
        """
        if attempts < 1 or max_redirects < 0 or max_bytes < 0:
            raise ConfigError("fetch limits must be positive (attempts >= 1, max_redirects >= 0, max_bytes >= 0)")
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.attempts = attempts
        self.backoff = backoff
        self._backend = _GuardedBackend(
            resolver or system_resolver,
            [_parse_allow(entry) for entry in allow],
            network_backend or httpcore.AnyIOBackend(),
        )
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(self._backend),
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "matchdb", "Accept": "image/*, */*;q=0.5", "Accept-Encoding": "identity"},
        )

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` after redirects; FetchError with a user-facing message on any failure."""
        start = _check_url(url)
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._fetch_once(url, start)
            except FetchError as exc:
                exc.attempts = attempt
                raise
            except _TRANSIENT_ERRORS:
                if attempt < self.attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        raise FetchError(f"Unable to download image from '{url}', Attempts: {self.attempts}", self.attempts)

    async def _fetch_once(self, original: str, start: httpx.URL) -> bytes:
        """One try: follow up to ``max_redirects`` redirects, each hop through the guarded transport."""
        current = start
        for _ in range(self.max_redirects + 1):
            response = await self._client.send(self._client.build_request("GET", current), stream=True)
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    try:
                        current = _check_url(current.join(location))
                    except httpx.InvalidURL:
                        raise FetchError(f"invalid redirect from '{original}'", cause="redirects") from None
                    continue
                if response.status_code >= 500 or response.status_code in _RETRY_STATUSES:
                    raise _Transient(response.status_code)
                if not 200 <= response.status_code < 300:
                    raise FetchError(f"HTTP {response.status_code} from '{original}'", cause="http_status")
                return await self._read_body(response)
            finally:
                await response.aclose()
        raise FetchError(f"too many redirects (max {self.max_redirects})", cause="redirects")

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The body, refusing it as soon as it is known to exceed ``max_bytes`` (header first, then as it streams)."""
        too_large = FetchError(f"image too large: more than {self.max_bytes} bytes", cause="too_large")
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                raise too_large
        return bytes(body)

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    async def __aenter__(self) -> Fetcher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
