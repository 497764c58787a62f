"""Per-caller rate limits by operation class, shared by every replica when the store is Redis.

Buckets are keyed by caller id and operation class (submit or read), never by URL: a bucket per request
id would be no limit at all. This uses `limits.aio`, the engine slowapi is built on, directly: slowapi's
own check path is synchronous (laurentS/slowapi#3, #130) and would block the event loop on Redis.
Answers carry the IETF `RateLimit-Policy` / `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from app.errors import TooManyRequests
from app.operations import SPENDING_KINDS, OpKind


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


class RateLimiter:
    def __init__(self, storage: Storage, submit: str, read: str) -> None:
        self._storage = storage
        # A sliding-window counter is O(1) per hit on both storages; a moving window keeps every hit of
        # the window in a list (O(limit) memory and time per hit at generous limits).
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[str, RateLimitItem] = {"submit": parse(submit), "read": parse(read)}

    @classmethod
    def for_store(cls, store_url: str, submit: str, read: str) -> RateLimiter:
        if store_url.startswith(("redis://", "rediss://")):
            storage: Storage = RedisStorage(
                "async+" + store_url, implementation="redispy", key_prefix="falgate-ratelimit"
            )
        else:
            # The embedded store is one process: an in-memory window is exact there.
            storage = MemoryStorage()
        return cls(storage, submit, read)

    async def hit(self, caller_id: str, policy: str) -> Verdict:
        """Count one request against the caller's bucket, or raise 429 without counting it."""
        item = self._items[policy]
        allowed = await self._strategy.hit(item, caller_id, policy)
        reset_at, remaining = await self._strategy.get_window_stats(item, caller_id, policy)
        reset = max(1, math.ceil(reset_at - time.time()))
        verdict = Verdict(policy, item.amount, max(0, remaining), reset, item.get_expiry())
        if not allowed:
            raise TooManyRequests(
                f"Rate limit exceeded: {item.amount} {policy} requests per {item.get_expiry()} s",
                headers={**verdict.headers(), "retry-after": str(reset)},
                limit=policy,
            )
        return verdict

    async def check(self) -> bool:
        return await self._storage.check()
