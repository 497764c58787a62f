"""The gateway's shared state behind one interface: SQLite for a single host, Redis for many replicas."""

from __future__ import annotations

from app.store.base import (
    TERMINAL_STATES,
    Completion,
    Delivery,
    Event,
    RequestRecord,
    Store,
    StoredResponse,
    StoreUnavailable,
)

__all__ = [
    "TERMINAL_STATES",
    "Completion",
    "Delivery",
    "Event",
    "RequestRecord",
    "Store",
    "StoreUnavailable",
    "StoredResponse",
    "open_store",
]

_SQLITE = "sqlite:///"
_REDIS = ("redis://", "rediss://")


def open_store(url: str, *, redis_prefix: str = "falgate:") -> Store:
    """`sqlite:///path` (relative), `sqlite:////abs/path`, `sqlite:///:memory:`, or `redis[s]://host:port/db`.

    Connections open lazily; `await store.ping()` at startup to fail fast on a bad URL.
    `redis_prefix` namespaces every Redis key (several gateways or test runs on one Redis).
    """
    # Backends import lazily so a deploy only loads the driver it uses.
    if url.startswith(_SQLITE):
        from app.store.sqlite import SQLiteStore

        path = url[len(_SQLITE) :]
        if not path:
            raise ValueError("a sqlite store URL needs a path: sqlite:///./falgate.db or sqlite:///:memory:")
        return SQLiteStore(path)
    if url.startswith(_REDIS):
        from app.store.redis import RedisStore

        return RedisStore(url, prefix=redis_prefix)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///path or redis://host:port/db")
