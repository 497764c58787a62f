"""Where the test suites find Redis: 127.0.0.1:6379 unless FALGATE_TEST_REDIS names another host:port.

Each suite keeps a database number of its own; pointing FALGATE_TEST_REDIS at a private `redis-server`
lets two test runs (or a fault test that kills its Redis) share a machine without touching each other.
"""

from __future__ import annotations

import os

REDIS_ADDRESS = os.environ.get("FALGATE_TEST_REDIS", "127.0.0.1:6379")


def redis_url(db: int) -> str:
    return f"redis://{REDIS_ADDRESS}/{db}"
