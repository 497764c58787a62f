"""Named, expiring leases across replicas: "at most one replica does X at a time".

Used so one request's upstream status stream is watched by at most one replica, and one replica runs
the fallback poller. A holder renews its lease (acquire again) well within the ttl; if it dies, the
lease lapses and another replica takes over. A lease is advisory: the work it guards must still be
safe to repeat (it is: the store's writes are first-write-wins), since a holder stalled past its ttl
can briefly overlap its successor.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

from app.store import StoreUnavailable, is_redis_url

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

# KEYS[1] lease; ARGV holder, ttl ms. Take it if free, extend it if ours; SET NX PX plus re-entry.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _check_ttl(ttl: float) -> None:
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class Leases(ABC):
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        """Takes `name` for `ttl` seconds if it is free (or lapsed); the holder re-acquiring extends it."""

    @abstractmethod
    async def release(self, name: str, holder: str) -> None:
        """Frees `name`, only if `holder` still holds it (never a successor's lease)."""

    async def close(self) -> None:
        return None


class MemoryLeases(Leases):
    """One process: a dict of name -> (holder, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        _check_ttl(ttl)
        now = time.monotonic()
        current = self._held.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._held[name] = (holder, now + ttl)
        return True

    async def release(self, name: str, holder: str) -> None:
        current = self._held.get(name)
        if current is not None and current[0] == holder:
            del self._held[name]


class RedisLeases(Leases):
    """Replicas: a key per lease, `{prefix}lease:{name}` holding the holder, expiring on Redis's clock."""

    def __init__(self, redis: str | ConnectionPool, *, prefix: str = "falgate:") -> None:
        """`redis`: the process's shared pool (left open by `close`), or a URL for a pool of the leases' own."""
        # Here, not at the top: this module is also the one-process deployment's, which never loads redis.
        from app.store.redis_pool import UNAVAILABLE_ERRORS, redis_client

        self._prefix = prefix
        self._unavailable = UNAVAILABLE_ERRORS
        self._redis = redis_client(redis)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    def _key(self, name: str) -> str:
        return f"{self._prefix}lease:{quote(name, safe='')}"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        # As the store's guard: unreachable or not Redis is "unavailable"; a script bug surfaces as is.
        except self._unavailable as exc:
            raise StoreUnavailable(f"redis leases: {exc}") from exc

    async def acquire(self, name: str, holder: str, ttl: float) -> bool:
        _check_ttl(ttl)
        with self._guard():
            return bool(await self._acquire(keys=[self._key(name)], args=[holder, max(1, math.ceil(ttl * 1000))]))

    async def release(self, name: str, holder: str) -> None:
        with self._guard():
            await self._release(keys=[self._key(name)], args=[holder])

    async def close(self) -> None:
        await self._redis.aclose()


def open_leases(store_url: str, *, prefix: str = "falgate:", redis_pool: ConnectionPool | None = None) -> Leases:
    """RedisLeases on the store's Redis for `redis[s]://` URLs, else MemoryLeases (one process).

    `redis_pool` is the process's shared pool (see `app.store.open_redis_pool`), else the leases open their own.
    """
    if is_redis_url(store_url):
        return RedisLeases(store_url if redis_pool is None else redis_pool, prefix=prefix)
    return MemoryLeases()
