"""The outbound-URL policy: which URLs a customer gives Flow may be called, and the one
HTTP client that calls them.

Every URL a customer chooses (a webhook, an export destination's host, any later
destination) is checked with :func:`check_url` when it is given and is called only
through :func:`outbound_client`, which checks it again on every new connection.

Rules (each refusal is :class:`UrlNotAllowed`, whose message names the rule and is safe
to show the customer):

- ``https`` only when ``FLOW_ENV=production``; ``http`` or ``https`` otherwise.
- A host, no userinfo (``http://user:pass@host``), at most 2048 characters.
- The host is resolved and EVERY address must be public. Numeric hosts are read the
  way ``inet_aton`` reads them (``2130706433``, ``0x7f000001``, ``017700000001`` and
  ``127.1`` are all 127.0.0.1) and are never handed to a resolver. Refused: loopback,
  private, link-local, unique-local (fc00::/7), site-local, multicast, unspecified,
  reserved, shared (100.64.0.0/10), documentation and any other non-global range, in
  IPv4, IPv6, and the IPv4 address inside v4-mapped (``::ffff:a.b.c.d``), NAT64
  (64:ff9b::/96), 6to4 (2002::/16) and Teredo addresses.
- Cloud metadata endpoints (169.254.169.254, fd00:ec2::254, ``metadata.google.internal``,
  ``metadata``) are refused whatever the settings.

``FLOW_ALLOW_PRIVATE_URLS=true`` (development only: :class:`~flow.config.Settings`
refuses it in production) lifts the address rules but the metadata one, so local
sinks work.

Pinning: the client's transport connects through :class:`PinnedNetworkBackend`. Each
new TCP connection resolves the host once, checks every address, and connects the
socket to one of those checked addresses (as an IP, so nothing resolves it again).
The request keeps its URL: the ``Host`` header is the original host, and httpcore
starts TLS with the URL's host as ``server_hostname``, so SNI and certificate
verification use the original hostname, not the IP. A name that resolves to a public
address when checked and to 127.0.0.1 a moment later (DNS rebinding) never reaches
127.0.0.1. The client follows no redirects, ignores proxy and netrc settings from the
environment, reads at most :data:`MAX_ANSWER_BYTES` of an answer, and allows a request
:data:`DEADLINE_FACTOR` times its timeout in all.

What callers report: :data:`UNREACHABLE` for every failure to resolve, connect, send or
read (a caller cannot tell a closed port from a timeout or a non-HTTP service), and
:func:`answered` for a status; never a remote body.

Resolution is injectable: pass ``resolver=``, or replace :data:`resolve_host`, which
every check looks up when it runs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore
import httpx

from flow.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""``await resolver(host, port)``: the host's addresses; raises ``OSError`` when it has
none (a timeout is an ``OSError`` too)."""

MAX_URL_LENGTH = 2048
DNS_TIMEOUT_SECONDS = 3.0
MAX_ANSWER_BYTES = 1024 * 1024
DEADLINE_FACTOR = 3
UNREACHABLE = "the destination could not be reached"

METADATA = "a cloud metadata address"
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# What inet_aton reads as an IPv4 address: 1 to 4 parts, decimal, octal or hex.
_INET_ATON_FORM = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)


class UrlNotAllowed(ValueError):
    """A URL Flow will not call. ``str(exc)`` names the rule; safe to show the caller."""


def answered(status_code: int) -> str:
    """The fixed reason for an answer that is not a success: its status, never its body
    (a redirect is such an answer: it is not followed)."""
    reason = f"the destination answered HTTP {status_code}"
    return reason + (" (redirects are not followed)" if 300 <= status_code < 400 else "")


@dataclass(frozen=True)
class Target:
    """Where a URL points: its scheme, its host (IDNA, IPv6 without brackets), its port."""

    scheme: str
    host: str
    port: int


def check_url_shape(url: str | httpx.URL, settings: Settings) -> Target:
    """The rules that need no network (scheme, userinfo, host, length, metadata names);
    raises :class:`UrlNotAllowed`."""
    if isinstance(url, str):
        if not url:
            raise UrlNotAllowed("the URL is empty")
        if len(url) > MAX_URL_LENGTH:
            raise UrlNotAllowed(f"the URL is longer than {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise UrlNotAllowed("the URL is not valid") from None
    else:
        parsed = url
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed("only http and https URLs are allowed")
    if parsed.scheme != "https" and settings.flow_env == "production":
        raise UrlNotAllowed("https is required in production")
    if parsed.userinfo:
        raise UrlNotAllowed("userinfo is not allowed in a URL")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise UrlNotAllowed("the URL has no host")
    if host.rstrip(".").lower() in METADATA_HOSTS:
        raise UrlNotAllowed(f"host {host} is a cloud metadata endpoint; refused")
    return Target(parsed.scheme, host, parsed.port or (443 if parsed.scheme == "https" else 80))


def ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host stands for (``ipaddress`` forms, and the shorthand,
    decimal, octal and hex IPv4 forms ``inet_aton`` accepts), or ``None`` for a name."""
    host = host.removesuffix(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _INET_ATON_FORM.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_problem(address: IPAddress) -> str | None:
    """Why an address is not public (``"a loopback address"``), or ``None`` if it is."""
    if ipaddress.ip_address(str(address).split("%")[0]) in METADATA_ADDRESSES:
        return METADATA
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None or address.ipv4_mapped is not None or address in _NAT64:
                return problem
    checks: list[tuple[bool, str]] = [
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address in _UNIQUE_LOCAL, "a unique-local address"),
        (
            isinstance(address, ipaddress.IPv6Address) and address.is_site_local,
            "a site-local address",
        ),
        (address in _SHARED, "a shared (carrier-grade NAT) address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "a non-public address"),
    ]
    return next((problem for refused, problem in checks if refused), None)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The system's resolver (``getaddrinfo``), bounded by :data:`DNS_TIMEOUT_SECONDS`."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DNS_TIMEOUT_SECONDS):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))


resolve_host: Resolver = system_resolver
"""The resolver checks use when none is given (tests replace it)."""


async def allowed_addresses(
    host: str, port: int, settings: Settings, *, resolver: Resolver | None = None
) -> list[IPAddress]:
    """Resolve ``host`` once and check every address; returns them, the only addresses a
    connection to ``host`` may use. Raises :class:`UrlNotAllowed` when one is refused,
    ``OSError`` when the host does not resolve."""
    literal = ip_literal(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        addresses = list(await (resolver or resolve_host)(host, port))
        if not addresses:
            raise OSError(f"{host} has no address")
    for address in addresses:
        problem = address_problem(address)
        if problem is None or (settings.flow_allow_private_urls and problem != METADATA):
            continue
        # The address is shown for a numeric host only: for a name it would tell the
        # caller how our internal DNS answers.
        shown = f" ({literal})" if literal is not None else ""
        raise UrlNotAllowed(f"host resolves to {problem}{shown}; refused")
    return addresses


async def check_url(
    url: str,
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    require_resolution: bool = True,
) -> str:
    """Every rule, before a URL is accepted (raises :class:`UrlNotAllowed`); returns the
    URL. A host that does not resolve (yet) passes unless ``require_resolution``: every
    connection checks again, and refuses it then."""
    target = check_url_shape(url, settings)
    try:
        await allowed_addresses(target.host, target.port, settings, resolver=resolver)
    except (OSError, UnicodeError) as exc:
        if require_resolution:
            raise UrlNotAllowed("host does not resolve") from exc
    return url


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Connects a TCP socket only to an address it checked itself, just before.

    Parameters:
        settings: the policy (``FLOW_ALLOW_PRIVATE_URLS``).
        resolver: resolves names (default :data:`resolve_host`).
        inner: the backend that opens the socket to the checked IP (httpcore's anyio).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await allowed_addresses(host, port, self._settings, resolver=self._resolver)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(UNREACHABLE) from exc
        failure: Exception = httpcore.ConnectError(UNREACHABLE)
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not outbound destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class OutboundTransport(httpx.AsyncHTTPTransport):
    """httpx's transport on a connection pool whose every connection is pinned by
    :class:`PinnedNetworkBackend`; each request's URL is checked (no network) before it
    is sent, and at most ``max_answer_bytes`` of its answer are read, within
    ``deadline_seconds`` in all."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = httpx.Limits(max_connections=20, max_keepalive_connections=10),
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        deadline_seconds: float | None = None,
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self._settings = settings
        self._max_answer_bytes = max_answer_bytes
        self._deadline_seconds = deadline_seconds
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PinnedNetworkBackend(
                settings, resolver=resolver, inner=network_backend
            ),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_url_shape(request.url, self._settings)
        request.extensions.pop("sni_hostname", None)  # TLS verifies the URL's host
        try:
            with anyio.fail_after(self._deadline_seconds):
                response = await super().handle_async_request(request)
                try:
                    body = await self._bounded_body(response, request)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(UNREACHABLE, request=request) from None
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            extensions=response.extensions,
        )

    async def _bounded_body(self, response: httpx.Response, request: httpx.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > self._max_answer_bytes:
                raise httpx.RemoteProtocolError("the answer is too large", request=request)
            chunks.append(chunk)
        return b"".join(chunks)


def outbound_client(
    settings: Settings,
    *,
    timeout: float,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
    **client_options: Any,
) -> httpx.AsyncClient:
    """The client for every URL a customer gives Flow: pinned to checked addresses, no
    redirects, no proxies or credentials from the environment.

    Parameters:
        timeout: httpx's per-operation timeout; a request gets three times it in all.
        resolver: replaces :data:`resolve_host` (tests).
        network_backend: opens the sockets to the checked IPs (tests record them).
        verify: TLS verification (an ``SSLContext`` trusting a test CA, in tests).
        client_options: more ``httpx.AsyncClient`` options (``headers``, ...).
    """
    transport = OutboundTransport(
        settings,
        resolver=resolver,
        network_backend=network_backend,
        verify=verify,
        deadline_seconds=timeout * DEADLINE_FACTOR,
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        **client_options,
    )
