"""Live events for watchers on every replica (`EventBus`), and how to follow a request through them."""

from __future__ import annotations

from app.relay.bus.base import DEFAULT_QUEUE_SIZE, BusUnavailable, EventBus, Subscription
from app.relay.bus.follow import TERMINAL_EVENT_KINDS, follow

__all__ = [
    "TERMINAL_EVENT_KINDS",
    "BusUnavailable",
    "EventBus",
    "Subscription",
    "follow",
    "open_bus",
]

_REDIS = ("redis://", "rediss://")


def open_bus(store_url: str, *, prefix: str = "falgate:", queue_size: int = DEFAULT_QUEUE_SIZE) -> EventBus:
    """A RedisBus on the store's own Redis for `redis[s]://` URLs, else an in-process MemoryBus.

    A MemoryBus only reaches watchers in this process: fine for a single-process SQLite deployment,
    not for several processes sharing one SQLite file. `prefix` matches the store's `redis_prefix`.
    """
    # Backends import lazily, like the store's, so a SQLite deploy never loads redis.
    if store_url.startswith(_REDIS):
        from app.relay.bus.redis import RedisBus

        return RedisBus(store_url, prefix=prefix, queue_size=queue_size)
    from app.relay.bus.memory import MemoryBus

    return MemoryBus(queue_size=queue_size)
