"""Per-caller rate limits by operation class, shared by every replica when the store is Redis.

Buckets are keyed by caller id and operation class (submit or read), never by URL: a bucket per request
id would be no limit at all. This uses `limits.aio`, the engine slowapi is built on, directly: slowapi's
own check path is synchronous (laurentS/slowapi#3, #130) and would block the event loop on Redis.
Answers carry the IETF `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from app.errors import TooManyRequests
from app.pipeline.operations import SPENDING_KINDS, OpKind
from app.store import StoreUnavailable, is_redis_url

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool


@dataclass(frozen=True, slots=True)
class Verdict:
    policy: str
    limit: int
    remaining: int
    reset_seconds: int
    window: int

    def headers(self) -> dict[str, str]:
        return {
            "ratelimit-policy": f'"{self.policy}";q={self.limit};w={self.window}',
            "ratelimit": f'"{self.policy}";r={self.remaining};t={self.reset_seconds}',
        }


def operation_class(kind: OpKind) -> str:
    return "submit" if kind in SPENDING_KINDS or kind is OpKind.UPLOAD_INITIATE else "read"


class InProcessWindows:
    """Sliding-window counters for one process, with the arithmetic of `limits`' sliding-window counter.

    The embedded store's deployment is one process, so its windows can live in a dict. `limits`' memory
    storage does the same job at several times the cost per request (bench/README.md): a lock per key,
    a timer thread re-armed for expiry, and a second call for the remaining count.
    """

    _MAX_KEYS = 100_000
    _TRIM_PER_HIT = 2  # more than the one window a hit can add, so the map shrinks back as callers leave

    def __init__(self) -> None:
        # period -> key -> [period, window number, hits in the previous window, hits in the current one],
        # least recently hit first. In anonymous mode a key is a client address, so anyone can add keys:
        # forgetting only from the cold end is O(1) per request, where a scan for stale windows was
        # O(keys). Within one period, least recently hit is also oldest window, so stale ones are first.
        self._by_period: dict[int, OrderedDict[str, list[int]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def hit(self, key: str, limit: int, period: int, now: float) -> tuple[bool, float, int]:
        """(allowed, reset_at, remaining) after counting one hit, unless the limit is reached."""
        number = int(now // period)
        windows = self._by_period.get(period)
        if windows is None:
            windows = self._by_period[period] = OrderedDict()
        window = windows.get(key)
        if window is None:
            self._size += 1
        if window is None or window[1] < number - 1:
            window = [period, number, 0, 0]
        elif window[1] == number - 1:
            window = [period, number, window[3], 0]
        left_in_window = period - now % period  # also how long the previous window still weighs
        weighted = window[2] * left_in_window / period + window[3]
        allowed = math.floor(weighted) + 1 <= limit
        if allowed:
            window[3] += 1
            weighted += 1
        windows[key] = window
        windows.move_to_end(key)
        self._trim(windows, number - 1)
        resets = [left_in_window % period] if window[3] else []
        if window[2]:
            resets.append(left_in_window % (period / window[2]))
        return allowed, now + min(resets, default=0.0), max(0, limit - math.floor(weighted))

    def _trim(self, windows: OrderedDict[str, list[int]], oldest_live: int) -> None:
        for _ in range(self._TRIM_PER_HIT):
            if not windows:
                break
            key, window = next(iter(windows.items()))
            if window[1] >= oldest_live:
                break
            del windows[key]
            self._size -= 1
        # A hard bound on memory: past the cap the coldest live window goes, from the shortest period
        # first (it would be forgotten soonest anyway; an hourly window is not old because a per-second one is).
        while self._size > self._MAX_KEYS:
            shortest = min(period for period, held in self._by_period.items() if held)
            self._by_period[shortest].popitem(last=False)
            self._size -= 1


class RateLimiter:
    def __init__(
        self, storage: Storage | InProcessWindows, submit: str, read: str, *, owned_pool: ConnectionPool | None = None
    ) -> None:
        self._storage = storage
        self._owned_pool = owned_pool  # closed by `close`; a shared pool is its opener's to close
        # A sliding-window counter is O(1) per hit on both storages; a moving window keeps every hit of
        # the window in a list (O(limit) memory and time per hit at generous limits).
        self._strategy = None if isinstance(storage, InProcessWindows) else SlidingWindowCounterRateLimiter(storage)
        self._items: dict[str, RateLimitItem] = {"submit": parse(submit), "read": parse(read)}

    @classmethod
    def for_store(
        cls, store_url: str, submit: str, read: str, *, redis_pool: ConnectionPool | None = None
    ) -> RateLimiter:
        """Windows in the store's Redis, on `redis_pool` (the process's shared pool, see
        `app.store.open_redis_pool`; without one the limiter opens its own); else in this process."""
        if not is_redis_url(store_url):
            # The embedded store is one process: an in-memory window is exact there.
            return cls(InProcessWindows(), submit, read)
        owned = None
        if redis_pool is None:
            from app.store.redis_pool import connection_pool

            redis_pool = owned = connection_pool(store_url)
        # `limits` builds its redis-py client on the pool (RedispyBridge.use_basic); the URL then only
        # names the backend. Its `**options` are typed as scalars, but a pool is what use_basic looks for.
        storage = RedisStorage(
            "async+" + store_url,
            implementation="redispy",
            key_prefix="falgate-ratelimit",
            wrap_exceptions=True,  # StorageError for any Redis failure, answered as the store's 503
            connection_pool=redis_pool,  # type: ignore[arg-type]
        )
        return cls(storage, submit, read, owned_pool=owned)

    async def close(self) -> None:
        if self._owned_pool is not None:
            await self._owned_pool.aclose()

    async def hit(self, caller_id: str, policy: str) -> Verdict:
        """Count one request against the caller's bucket, or raise 429 without counting it."""
        item = self._items[policy]
        now = time.time()
        if self._strategy is None:
            assert isinstance(self._storage, InProcessWindows)
            key = item.key_for(caller_id, policy)
            allowed, reset_at, remaining = self._storage.hit(key, item.amount, item.get_expiry(), now)
        else:
            try:
                allowed = await self._strategy.hit(item, caller_id, policy)
                reset_at, remaining = await self._strategy.get_window_stats(item, caller_id, policy)
            except StorageError as exc:
                raise StoreUnavailable(f"rate limiter: {type(exc.storage_error).__name__}") from exc
        reset = max(1, math.ceil(reset_at - now))
        verdict = Verdict(policy, item.amount, max(0, remaining), reset, item.get_expiry())
        if not allowed:
            raise TooManyRequests(
                f"Rate limit exceeded: {item.amount} {policy} requests per {item.get_expiry()} s",
                headers={**verdict.headers(), "retry-after": str(reset)},
                limit=policy,
            )
        return verdict
