"""The gateway's shared state behind one interface: SQLite for a single host, Redis for many replicas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.store.base import (
    PROGRESS_ORDER,
    TERMINAL_STATES,
    Completion,
    Delivery,
    DeliveryState,
    Event,
    RequestRecord,
    RequestState,
    Store,
    StoredResponse,
    StoreUnavailable,
)
from app.store.devices import Device, DevicePlatform

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

__all__ = [
    "PROGRESS_ORDER",
    "TERMINAL_STATES",
    "Completion",
    "Delivery",
    "DeliveryState",
    "Device",
    "DevicePlatform",
    "Event",
    "RequestRecord",
    "RequestState",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
    "is_redis_url",
    "open_redis_pool",
    "open_store",
]

_SQLITE = "sqlite:///"
_REDIS = ("redis://", "rediss://")


def is_redis_url(url: str) -> bool:
    return url.startswith(_REDIS)


def open_redis_pool(url: str) -> ConnectionPool | None:
    """The process's one Redis connection pool for a `redis[s]://` store URL; None for any other URL.

    Hand it to `open_store`, `open_bus`, `open_leases` and `RateLimiter.for_store`, and close it after
    them (they leave a pool they were given open). Connections open lazily, as commands need them.
    """
    if not is_redis_url(url):
        return None
    from app.store.redis_pool import connection_pool

    return connection_pool(url)


def open_store(url: str, *, redis_prefix: str = "falgate:", redis_pool: ConnectionPool | None = None) -> Store:
    """`sqlite:///path` (relative), `sqlite:////abs/path`, `sqlite:///:memory:`, or `redis[s]://host:port/db`.

    Connections open lazily; `await store.ping()` at startup to fail fast on a bad URL.
    `redis_prefix` namespaces every Redis key (several gateways or test runs on one Redis).
    `redis_pool` (from `open_redis_pool(url)`) is shared with the process's other parts and stays open
    when the store closes; without one, a Redis store opens a pool of its own.
    """
    # Backends import lazily so a deploy only loads the driver it uses.
    if url.startswith(_SQLITE):
        from app.store.sqlite import SQLiteStore

        path = url[len(_SQLITE) :]
        if not path:
            raise ValueError("a sqlite store URL needs a path: sqlite:///./falgate.db or sqlite:///:memory:")
        return SQLiteStore(path)
    if is_redis_url(url):
        from app.store.redis import RedisStore

        return RedisStore(url if redis_pool is None else redis_pool, prefix=redis_prefix)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path or redis://host:port/db")
