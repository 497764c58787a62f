"""One cache of a JSON Web Key Set fetched over HTTP: callers' JWT keys and fal's webhook keys both use it.

What a key *is* stays with the user: the cache is given a `parse` function that turns the document's
`keys` list into keys (PyJWK objects, Ed25519 public keys, ...) and raises ValueError for a set with
nothing usable in it.

- The set is reused for `ttl` seconds, then refetched on the next use. While one task refreshes an
  expired set, the others keep using the old one rather than queueing behind the fetch.
- A key that is not in the set may be a freshly rotated one: `refetch` asks for the set again.
- Fetches of any kind happen at most once per `cooldown` seconds: anybody can present tokens or
  signatures that match no key, and each must not cost us (and the provider) a fetch. An asyncio.Lock
  makes concurrent misses share one fetch, and a task that waited on it sees the set the fetch brought.
- If the provider is unreachable or answers nonsense, the last good set stays in use.
- A clock that went backwards counts as "expired" and "cooldown over", rather than pinning the set.

`KeySetUnavailable` means no usable set is at hand (never fetched, or the refetch a miss needed
failed); each user maps it to its own answer (a 503 for callers, a retryable rejection for fal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

log = logging.getLogger("falgate.jwks")

K = TypeVar("K")

FETCH_TIMEOUT_SECONDS = 5.0  # a fetch runs inside a request, under the lock other requests wait on
MAX_DOCUMENT_BYTES = 1024 * 1024  # real key sets are a few KB


class KeySetUnavailable(Exception):
    """No usable key set is at hand: the keys cannot be checked right now (not: the key is unknown)."""


@dataclass(frozen=True, slots=True)
class KeySet(Generic[K]):
    keys: tuple[K, ...]
    generation: int  # bumped by every successful fetch


class _FetchError(Exception):
    pass


class JWKSCache(Generic[K]):
    """One instance per key-set URL and process; coroutine-safe. Times come from `clock`."""

    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        parse: Callable[[list[object]], tuple[K, ...]],
        *,
        ttl: float,
        cooldown: float,
        label: str = "JWKS",
        max_bytes: int = MAX_DOCUMENT_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._parse = parse
        self._ttl = ttl
        self.cooldown = cooldown
        self._label = label
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = asyncio.Lock()
        self._set: KeySet[K] | None = None
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not: the cooldown's start
        self._last_failed = False

    async def current(self) -> KeySet[K]:
        """The key set, fetched first if there is none or it is older than `ttl`; KeySetUnavailable if none."""
        if self._expired() and not (self._set is not None and self._lock.locked()):
            seen = self._generation()
            async with self._lock:
                if self._generation() == seen and not self._cooling_down():
                    await self._fetch()
        if self._set is None:
            raise KeySetUnavailable(f"the {self._label} could not be fetched")
        return self._set

    async def refetch(self, seen: KeySet[K]) -> KeySet[K] | None:
        """After a key was not found in `seen`: a newer set, or None if the cooldown forbids a fetch.

        KeySetUnavailable if the fetch failed (now or, within the cooldown, last time): the key may be
        in a set we cannot see.
        """
        async with self._lock:
            if self._set is not None and self._set.generation != seen.generation:
                return self._set  # a concurrent miss fetched while we waited: one fetch serves all of them
            if not self._cooling_down() and await self._fetch():
                return self._set
            if self._last_failed:
                raise KeySetUnavailable(f"the {self._label} could not be fetched")
            return None

    def _generation(self) -> int:
        return -1 if self._set is None else self._set.generation

    def _expired(self) -> bool:
        return self._fetched_at is None or not 0 <= self._clock() - self._fetched_at < self._ttl

    def _cooling_down(self) -> bool:
        return self._attempted_at is not None and 0 <= self._clock() - self._attempted_at < self.cooldown

    async def _fetch(self) -> bool:
        """One fetch, under the lock; True if it brought a usable set."""
        now = self._attempted_at = self._clock()
        try:
            keys = self._parse(await self._download())
        except (_FetchError, ValueError) as exc:
            self._last_failed = True
            log.warning("could not fetch the %s from %s: %s", self._label, self._url, exc)
            return False
        self._set = KeySet(keys, self._generation() + 1)
        self._fetched_at, self._last_failed = now, False
        return True

    async def _download(self) -> list[object]:
        try:
            async with self._http.stream(
                "GET",
                self._url,
                timeout=FETCH_TIMEOUT_SECONDS,
                follow_redirects=True,
                headers={"accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise _FetchError(f"HTTP {response.status_code}")
                raw = bytearray()
                async for chunk in response.aiter_bytes():
                    raw += chunk
                    if len(raw) > self._max_bytes:
                        raise _FetchError("response too large")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise _FetchError(type(exc).__name__) from None
        try:
            document = json.loads(raw)
        except ValueError:  # UnicodeDecodeError included
            raise _FetchError("not JSON") from None
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise _FetchError("no 'keys' list")
        return entries
