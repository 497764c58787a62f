"""An httpx transport that connects only to public addresses: for URLs that callers choose (webhooks).

The check sits in the connection pool's network backend, the one place every connection is made:
`PublicOnlyBackend.connect_tcp` resolves the host name itself, drops every private, loopback,
link-local, metadata, CGNAT, NAT64, IPv4-mapped and other non-public address, and hands the inner
backend the *checked IP address*, never the name. There is no second lookup an attacker's DNS could
answer differently (DNS rebinding). A literal IP host is checked the same way.

TLS still verifies against the URL's host: httpcore's `AsyncHTTPConnection._connect` calls
`stream.start_tls(server_hostname=<the origin's host>)` on the stream this backend returns, so the
certificate must match the name in the URL, whatever address it was reached at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpcore
import httpx

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Named for clearer reasons; all of them also fall in one of the non-public ranges checked below.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 prefixes map IPv4 addresses (including 127.0.0.1) into IPv6 through a translator.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class AddressRefused(Exception):
    """A host we will not connect to; `reason` is short, human-readable and quotes no part of the URL."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NameNotResolved(httpcore.ConnectError):
    """The host name has no address at all (a failed attempt, unlike a refusal: it may resolve later)."""


def address_refusal(ip: _IPAddress) -> str | None:
    """Why `ip` is not a public address, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address reaches that IPv4 address: judge the embedded one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return address_refusal(embedded)
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if any(ip in net for net in _NAT64):
            return "a NAT64 address"
    checks = (
        (ip in _METADATA, "a cloud metadata address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a shared (CGNAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "a non-public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


def _literal(host: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _legacy_numeric(host: str) -> bool:
    # "2130706433", "127.1", "0177.0.0.1": forms the OS resolver may still map onto 127.0.0.1.
    return ":" not in host and host.replace(".", "").isdigit()


def literal_refusal(host: str) -> str | None:
    """Why a host written as an IP address is refused; None for names and for public IP literals."""
    ip = _literal(host)
    if ip is None:
        return "an IP address in a non-canonical form" if _legacy_numeric(host) else None
    reason = address_refusal(ip)
    return f"the host is {reason}" if reason else None


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio backend, connecting only to checked public addresses. See the module docstring."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        # AnyIOBackend is what httpcore's default (AutoBackend) picks under asyncio.
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[str]:
        """The public addresses of `host`, in the resolver's order; AddressRefused if it has none."""
        ip = _literal(host)
        if ip is not None:
            reason = address_refusal(ip)
            if reason:
                raise AddressRefused(f"the host is {reason}")
            return [str(ip)]
        if _legacy_numeric(host):
            raise AddressRefused("an IP address in a non-canonical form")
        try:
            answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise NameNotResolved("the host name does not resolve") from None
        public: list[str] = []
        first_reason: str | None = None
        for *_, sockaddr in answers:
            address = _literal(str(sockaddr[0]))
            reason = "an unparseable address" if address is None else address_refusal(address)
            if reason is not None:
                first_reason = first_reason or reason
            elif str(address) not in public:
                public.append(str(address))
        if not public:
            raise AddressRefused(f"the host resolves to {first_reason or 'no address'}")
        return public

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout("resolving the host name timed out") from None
        failure: httpcore.ConnectError | None = None
        for address in addresses:  # every one of them checked; the inner backend never sees the name
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class PublicOnlyTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, its connection pool on a `PublicOnlyBackend`. No proxy, whatever the environment.

    `inner_backend` (tests) is what the checked addresses are handed to; it never replaces the check.
    """

    def __init__(
        self,
        *,
        limits: httpx.Limits = httpx.Limits(max_connections=100, max_keepalive_connections=20),
        inner_backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx 0.28 takes no network backend (encode/httpx#3749 would add one), so the pool it built is
        # replaced by one built the same way on ours. Refuse to run if httpx's layout ever changes, rather
        # than silently sending through an unchecked pool.
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("httpx.AsyncHTTPTransport no longer keeps its pool in `_pool`: update safe_transport")
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=PublicOnlyBackend(inner_backend),
        )
