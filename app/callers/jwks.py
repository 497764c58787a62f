"""The signing keys of `FALGATE_JWT_JWKS_URL`, fetched asynchronously and cached.

PyJWT's own PyJWKClient fetches with urllib, synchronously, which would stall the event loop for the
length of a round trip; this cache uses the shared `httpx.AsyncClient` instead.

- The key set is reused for `ttl` seconds, then refetched on the next use. While one request refreshes
  an expired set, the others keep verifying against the old one rather than queueing behind the fetch.
- A token whose `kid` is not in the set triggers a refetch, because identity providers rotate keys
  (that is how a freshly rotated key is picked up before the TTL ends).
- Fetches of any kind happen at most once per `cooldown` seconds: anybody can mint tokens with garbage
  kids, and each must not cost us (and the provider) a fetch. An asyncio.Lock makes concurrent misses
  share one fetch. The price: a key rotated in less than `cooldown` after the last fetch is refused
  (401) until the cooldown ends.
- If the provider is unreachable, the last good set stays in use. Only when no usable set is at hand
  (never fetched, or the refetch a token needed failed) is the answer 503 with Retry-After: the token
  may be fine, and the caller should retry rather than re-authenticate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any

import httpx
from jwt import PyJWK, PyJWTError

from app.callers.bearer import INVALID_TOKEN, unauthorized
from app.errors import ServiceUnavailable

log = logging.getLogger("falgate.auth")

JWKS_TTL_SECONDS = 600.0
JWKS_COOLDOWN_SECONDS = 10.0
_FETCH_TIMEOUT_SECONDS = 5.0
_MAX_JWKS_BYTES = 1024 * 1024  # real key sets are a few KB


class _FetchError(Exception):
    pass


class JWKSCache:
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        algorithms: Collection[str],
        ttl: float = JWKS_TTL_SECONDS,
        cooldown: float = JWKS_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._algorithms = frozenset(algorithms)
        self._ttl = ttl
        self._cooldown = cooldown
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: tuple[PyJWK, ...] | None = None
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not: the cooldown's start
        self._last_failed = False

    async def key(self, kid: str | None, alg: str) -> PyJWK:
        """The key to verify a token with this header `kid` and `alg`; 401 if unknown, 503 if unknowable."""
        if self._expired() and not (self._keys is not None and self._lock.locked()):
            await self._refresh()
        found = self._find(kid, alg)
        if found is None and await self._refresh():
            found = self._find(kid, alg)
        if found is not None:
            return found
        if self._keys is None or self._last_failed:
            raise ServiceUnavailable(
                "Cannot verify tokens right now: the signing keys (JWKS) could not be fetched",
                headers={"Retry-After": str(max(1, math.ceil(self._cooldown)))},
            )
        raise unauthorized("Token signed by an unknown key", INVALID_TOKEN)

    def _expired(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _find(self, kid: str | None, alg: str) -> PyJWK | None:
        candidates = [key for key in self._keys or () if key.algorithm_name == alg]
        if kid is None:
            # A token without kid is only unambiguous against a set with one key for its algorithm.
            return candidates[0] if len(candidates) == 1 else None
        return next((key for key in candidates if key.key_id == kid), None)

    async def _refresh(self) -> bool:
        """Fetch the set unless the cooldown forbids it; True if a fetch happened and succeeded."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._cooldown:
                return False  # fetched a moment ago, possibly by the request we queued behind
            self._attempted_at = now
            try:
                keys = await self._fetch()
            except _FetchError as exc:
                self._last_failed = True
                log.warning("could not fetch the JWKS from %s: %s", self._url, exc)
                return False
            self._keys, self._fetched_at, self._last_failed = keys, now, False
            return True

    async def _fetch(self) -> tuple[PyJWK, ...]:
        try:
            response = await self._http.get(
                self._url, timeout=_FETCH_TIMEOUT_SECONDS, follow_redirects=True, headers={"accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise _FetchError(type(exc).__name__) from None
        if response.status_code != 200:
            raise _FetchError(f"HTTP {response.status_code}")
        if len(response.content) > _MAX_JWKS_BYTES:
            raise _FetchError("response too large")
        try:
            document = response.json()
        except ValueError:
            raise _FetchError("not JSON") from None
        raw_keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw_keys, list):
            raise _FetchError("no 'keys' list")
        keys = tuple(key for key in map(self._usable, raw_keys) if key is not None)
        if not keys:
            log.warning("the JWKS at %s has no key for %s", self._url, ", ".join(sorted(self._algorithms)))
        return keys

    def _usable(self, jwk: Any) -> PyJWK | None:
        """A verification key for one of our algorithms, or None for anything else in the set."""
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            return None
        try:
            key = PyJWK(jwk)
        except (PyJWTError, ValueError, TypeError, KeyError):
            return None  # an unsupported kty/crv, or a broken entry: the rest of the set still counts
        # Filtering on the key's own algorithm is what rules out algorithm confusion: an `oct` (HMAC)
        # entry or an RSA key labelled HS256 never enters the set.
        return key if key.algorithm_name in self._algorithms else None
