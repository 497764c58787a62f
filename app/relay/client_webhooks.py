"""Sending a client's webhook: Standard Webhooks signatures, public-only targets, a retry schedule.

Targets must be public: every address a name resolves to is checked, and private, loopback, link-local,
metadata and other non-public ones are dropped *inside the resolver* of the connection pool, so the
address that was checked is the address that is connected to (there is no second lookup an attacker's
DNS could answer differently). `allow_private=True` (FALGATE_WEBHOOK_ALLOW_PRIVATE) lifts all of this for
local development.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import random
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

_SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 24
_MAX_URL_LENGTH = 2048
_READ_LIMIT = 4096  # enough to let a target finish a small answer; its content is never needed

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Named for clearer reasons; all of them also fall in one of the non-public ranges checked below.
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 prefixes map IPv4 addresses (including 127.0.0.1) into IPv6 through a translator.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class TargetRefused(Exception):
    """A webhook URL we will not deliver to; `reason` is a short human-readable explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_secret(secret: str) -> None:
    """Raise ValueError unless `secret` is "whsec_" + standard base64 of at least 24 bytes."""
    _secret_key(secret)


def new_secret() -> str:
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for one delivery attempt of `body` (which must be sent byte for byte)."""
    digest = hmac.new(_secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def _secret_key(secret: str) -> bytes:
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError('a webhook secret must start with "whsec_"')
    try:
        key = base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError('a webhook secret must be "whsec_" followed by standard base64') from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(f"a webhook secret must encode at least {_MIN_SECRET_BYTES} bytes (got {len(key)})")
    return key


def validate_target_url(url: str, *, allow_private: bool = False) -> str:
    """The submit-time check of a caller's webhook URL; returns it unchanged or raises TargetRefused.

    Only what the text shows is checked here (https, host, no credentials, no obviously internal
    literal); names are checked at every send, when they are resolved.
    """
    parsed = _parsed(url)
    if allow_private:
        return url
    if parsed.scheme != "https":
        raise TargetRefused("only https URLs are allowed")
    host = (parsed.raw_host or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        raise TargetRefused("localhost is not a public host")
    reason = _literal_refusal(parsed.raw_host or "")
    if reason:
        raise TargetRefused(reason)
    return url


def _parsed(url: str) -> URL:
    if len(url) > _MAX_URL_LENGTH:
        raise TargetRefused("the URL is too long")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise TargetRefused("the URL contains whitespace or control characters")
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 - an out-of-range port raises here, not at send time
    except (ValueError, TypeError):
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("only http(s) URLs are allowed")
    if not parsed.raw_host:
        raise TargetRefused("the URL has no host")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise TargetRefused("credentials in the URL are not allowed")
    if parsed.raw_fragment:
        raise TargetRefused("fragments are not allowed")
    return parsed


def _address_refusal(ip: _IPAddress) -> str | None:
    """Why `ip` is not a public address, or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 form that carries an IPv4 address reaches that IPv4 address: judge the embedded one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return _address_refusal(embedded)
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


def _literal_refusal(host: str) -> str | None:
    """Check a host that aiohttp will connect to without resolving it. None for names and public IPs."""
    # aiohttp's own test (helpers.is_ip_address): a colon, or only digits and dots. Such hosts skip the
    # resolver entirely, so the resolver's filter never sees them and they must be judged here.
    if ":" not in host and not host.replace(".", "").isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        # "2130706433", "127.1", "0177.0.0.1": legacy forms the OS may still map onto 127.0.0.1.
        return "an IP address in a non-canonical form"
    reason = _address_refusal(ip)
    return f"the host is {reason}" if reason else None


def _answer_refusal(address: str) -> str | None:
    try:
        return _address_refusal(ipaddress.ip_address(address))
    except ValueError:
        return "an unparseable address"


class _TargetRefusedError(OSError):
    """From the resolver: an OSError, so aiohttp wraps it in ClientConnectorDNSError (as `os_error`)."""


class _PublicOnlyResolver(AbstractResolver):
    """The default resolver with every non-public address removed from its answer.

    The connector connects only to the addresses this returns, so the checked address IS the connected
    one: no window for DNS rebinding between a check and a connect.
    """

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        reasons = [_answer_refusal(answer["host"]) for answer in answers]
        public = [answer for answer, reason in zip(answers, reasons, strict=True) if reason is None]
        if not public:
            raise _TargetRefusedError(f"the host resolves to {next(filter(None, reasons), 'no address')}")
        return public

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


class WebhookSender:
    """One connection pool for all client webhooks. Create and use it inside the event loop that sends."""

    def __init__(self, *, allow_private: bool, timeout: float = 10.0, user_agent: str = "falgate-webhooks") -> None:
        self._allow_private = allow_private
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a ClientSession must be made inside a running loop
            resolver = None if self._allow_private else _PublicOnlyResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver),
                timeout=self._timeout,
                trust_env=False,  # no HTTP(S)_PROXY: a proxy would connect to the target unchecked
                cookie_jar=aiohttp.DummyCookieJar(),  # one target's cookies must never reach another's
                auto_decompress=False,  # the answer is never parsed, so never inflate a possible bomb
            )
        return self._session

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        """POST `body` once. Never raises for a refused, unreachable, slow or failing target."""
        started = time.monotonic()

        def result(status: int | None, error: str | None) -> AttemptResult:
            ok = error is None and status is not None and 200 <= status < 300
            return AttemptResult(ok, status, error, int((time.monotonic() - started) * 1000))

        try:
            target = _parsed(url)
            if not self._allow_private:
                reason = _literal_refusal(target.raw_host or "")
                if reason:
                    raise TargetRefused(reason)
            request_headers = {"content-type": "application/json", **headers, "user-agent": self._user_agent}
            # No redirects: a 3xx is a failed attempt, and a Location pointing inside must never be followed.
            async with self._client().post(target, data=body, headers=request_headers, allow_redirects=False) as resp:
                await resp.content.read(_READ_LIMIT)
                status = resp.status
        except TargetRefused as exc:
            return result(None, f"target_refused: {exc.reason}")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _TargetRefusedError):
                return result(None, f"target_refused: {exc.os_error}")
            return result(None, f"connection_failed: {type(exc).__name__}")
        except TimeoutError:
            return result(None, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            # The exception text may quote the URL, and a webhook URL may carry a token: only the type.
            return result(None, f"request_failed: {type(exc).__name__}")
        if 300 <= status < 400:
            return result(status, f"redirect_not_followed: HTTP {status}")
        return result(status, None if 200 <= status < 300 else f"http_status: {status}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


BASE_DELAY = 5.0
MAX_GAP = 3600.0
MAX_ATTEMPTS = 35


def next_delay(attempt: int, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based), or None: give up.

    Nominal gap n is min(5 s * 2**(n-1), 1 h): 5 s, 10 s, 20 s ... 2560 s, then 1 h for gaps 11-34. The
    wait is that gap plus up to 50% random jitter, so retries of many deliveries to one recovering client
    spread out. 35 attempts in all; the 34 gaps sum to at least 91,515 s (25.4 h) and at most 38.1 h.

    Jitter is added on top of the gap rather than "full jitter" (uniform 0..gap): full jitter makes the
    time before giving up a random quantity with no useful lower bound, and the promise is >= 24 h.
    """
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    if attempt >= MAX_ATTEMPTS:
        return None
    gap = min(BASE_DELAY * 2.0 ** min(attempt - 1, 30), MAX_GAP)
    jitter = rng.random() if rng is not None else random.random()
    return gap * (1.0 + 0.5 * jitter)
