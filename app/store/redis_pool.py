"""The one Redis connection pool a process opens for a `redis[s]://` store URL, and its settings.

Every part that talks to Redis (the store, the event bus, the leases, the rate limiter) runs its
commands on this one pool, so a replica holds as many connections as it has commands in flight at
once, plus the bus's one subscriber connection, rather than a pool per part. `open_gateway` opens the
pool, hands it to each part and closes it last; a part given a URL instead (tests, tools) opens a
pool of its own with the same settings and closes it with itself.

Only imported for a Redis store: a SQLite deployment never loads redis.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Short enough that an unreachable or hung (SIGSTOPped) Redis answers a request with 503 within about a
# second, not after the OS's timeout: every command the gateway sends is a small O(1) script or lookup.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 1.0
# A connection idle this long is PINGed before its next command: a silently dropped one is replaced
# instead of failing that command.
HEALTH_CHECK_INTERVAL = 30
# What `CLIENT LIST` shows for the gateway's connections; `?client_name=` in the URL overrides it.
CLIENT_NAME = "falgate"

# Unreachable, timed out, not speaking Redis (wrong port), or a replica mid-failover: the parts turn
# these into StoreUnavailable. Other errors (a script bug, WRONGTYPE) are ours and surface as they are.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    InvalidResponse,
    ReadOnlyError,
    OSError,
)


def connection_pool(url: str) -> aioredis.ConnectionPool:
    """A pool for `url`; options in the URL's query (`?client_name=...&socket_timeout=...`) win."""
    # Bytes, not decoded strings: idempotent replays carry arbitrary response bodies.
    return aioredis.ConnectionPool.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        client_name=CLIENT_NAME,
    )


def redis_client(redis: str | aioredis.ConnectionPool) -> aioredis.Redis:
    """A client on a shared pool (closing the client leaves the pool open), or on a URL's pool of its
    own (closed with the client)."""
    if isinstance(redis, str):
        return aioredis.Redis.from_pool(connection_pool(redis))
    return aioredis.Redis(connection_pool=redis)


def subscriber_connection(pool: aioredis.ConnectionPool) -> AbstractConnection:
    """A connection with the pool's address and settings, outside the pool, speaking RESP2.

    For the bus's pub/sub link, which must never go back to the pool (it is subscribed) and reads
    messages as plain RESP2 replies. It pings on its own, so no health check runs before its commands;
    and maintenance notifications, which need RESP3, are off on it.
    """
    kwargs: dict[str, Any] = {**pool.connection_kwargs, "protocol": 2, "health_check_interval": 0}
    if "maint_notifications_config" in kwargs:  # redis-py >= 7 enables them on a RESP3 pool
        kwargs["maint_notifications_config"] = None
    return pool.connection_class(**kwargs)
