"""Sending a client's webhook: Standard Webhooks signatures, public-only targets, a retry schedule.

Targets must be public. Every address a name resolves to is checked inside the connection pool
(`app/net/safe_transport.py`): private, loopback, link-local, metadata and other non-public ones are
dropped and the connection is made to the checked address itself, so the address that was checked is
the address that is connected to (there is no second lookup an attacker's DNS could answer
differently). `allow_private=True` (FALGATE_WEBHOOK_ALLOW_PRIVATE) lifts all of this for local
development.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, CookiePolicy

import httpx

from app.net.safe_transport import AddressRefused, NameNotResolved, PublicOnlyTransport, literal_refusal

_SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 24
_MAX_URL_LENGTH = 2048
_READ_LIMIT = 4096  # enough to let a target finish a small answer; its content is never needed


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
    host = parsed.host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise TargetRefused("localhost is not a public host")
    reason = literal_refusal(parsed.host)
    if reason:
        raise TargetRefused(reason)
    return url


def _parsed(url: str) -> httpx.URL:
    """The URL as httpx will send it (so the text checked is the text sent), or TargetRefused."""
    if len(url) > _MAX_URL_LENGTH:
        raise TargetRefused("the URL is too long")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise TargetRefused("the URL contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise TargetRefused("not a valid URL") from None
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise TargetRefused("not a valid URL")
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused("only http(s) URLs are allowed")
    if not parsed.host:
        raise TargetRefused("the URL has no host")
    if parsed.userinfo:
        raise TargetRefused("credentials in the URL are not allowed")
    if parsed.fragment:
        raise TargetRefused("fragments are not allowed")
    return parsed


class _NoCookies(CookiePolicy):
    """Keep no cookie and send none: one target's cookies must never reach another's."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: object, request: object) -> bool:
        return False

    def return_ok(self, cookie: object, request: object) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: object) -> bool:
        return False

    def path_return_ok(self, path: str, request: object) -> bool:
        return False


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
        self._timeout = timeout
        self._user_agent = user_agent
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:  # created lazily, so that its pool belongs to the loop that sends
            # trust_env=False on both: no HTTP(S)_PROXY, since a proxy would connect to the target unchecked.
            transport = httpx.AsyncHTTPTransport(trust_env=False) if self._allow_private else PublicOnlyTransport()
            self._http = httpx.AsyncClient(
                transport=transport,
                trust_env=False,
                follow_redirects=False,  # a 3xx is a failed attempt; a Location pointing inside is never followed
                cookies=CookieJar(policy=_NoCookies()),
                timeout=httpx.Timeout(self._timeout),
            )
        return self._http

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> AttemptResult:
        """POST `body` once. Never raises for a refused, unreachable, slow or failing target."""
        started = time.monotonic()

        def result(status: int | None, error: str | None) -> AttemptResult:
            ok = error is None and status is not None and 200 <= status < 300
            return AttemptResult(ok, status, error, int((time.monotonic() - started) * 1000))

        try:
            target = _parsed(url)
            if not self._allow_private:
                reason = literal_refusal(target.host)
                if reason:
                    raise TargetRefused(reason)
            request_headers = {"content-type": "application/json", **headers, "user-agent": self._user_agent}
            async with asyncio.timeout(self._timeout):  # the whole attempt, not each phase of it
                async with self._client().stream("POST", target, content=body, headers=request_headers) as resp:
                    # Raw bytes: the answer is never parsed, so never inflate a possible bomb.
                    received = 0
                    async for chunk in resp.aiter_raw():
                        received += len(chunk)
                        if received >= _READ_LIMIT:
                            break
                    status = resp.status_code
        except (TargetRefused, AddressRefused) as exc:
            return result(None, f"target_refused: {exc.reason}")
        except (TimeoutError, httpx.TimeoutException):
            return result(None, "timeout")
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, NameNotResolved):
                return result(None, "connection_failed: the host name does not resolve")
            return result(None, f"connection_failed: {type(exc).__name__}")
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            # The exception text may quote the URL, and a webhook URL may carry a token: only the type.
            return result(None, f"request_failed: {type(exc).__name__}")
        if 300 <= status < 400:
            return result(status, f"redirect_not_followed: HTTP {status}")
        return result(status, None if 200 <= status < 300 else f"http_status: {status}")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


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
