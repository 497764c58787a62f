"""Live events for watchers on every replica (`EventBus`), and how to follow a request through them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.relay.bus.base import DEFAULT_QUEUE_SIZE, BusUnavailable, EventBus, Subscription
from app.relay.bus.follow import TERMINAL_EVENT_KINDS, follow
from app.store import is_redis_url

if TYPE_CHECKING:
    from redis.asyncio import ConnectionPool

__all__ = [
    "TERMINAL_EVENT_KINDS",
    "BusUnavailable",
    "EventBus",
    "Subscription",
    "follow",
    "open_bus",
]

def open_bus(
    store_url: str,
    *,
    prefix: str = "falgate:",
    queue_size: int = DEFAULT_QUEUE_SIZE,
    redis_pool: ConnectionPool | None = None,
) -> EventBus:
    """A RedisBus on the store's own Redis for `redis[s]://` URLs, else an in-process MemoryBus.

    A MemoryBus only reaches watchers in this process: fine for a single-process SQLite deployment,
    not for several processes sharing one SQLite file. `prefix` matches the store's `redis_prefix`;
    `redis_pool` is the process's shared pool (see `app.store.open_redis_pool`), else the bus opens its own.
    """
    # Backends import lazily, like the store's, so a SQLite deploy never loads redis.
    if is_redis_url(store_url):
        from app.relay.bus.redis import RedisBus

        return RedisBus(store_url if redis_pool is None else redis_pool, prefix=prefix, queue_size=queue_size)
    from app.relay.bus.memory import MemoryBus

    return MemoryBus(queue_size=queue_size)
