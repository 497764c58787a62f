"""Store fixtures shared by the store and bus suites: every test runs on SQLite and on the real Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.store import Store, open_store
from tests.redis_server import redis_url

REDIS_URL = os.environ.get("FALGATE_TEST_REDIS_URL", redis_url(15))


@dataclass
class Backend:
    kind: str
    open: Callable[[], Store]  # another store on the same data: a second connection, or a second replica


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards, pass or fail."""
    prefix = f"falgate-test:{uuid.uuid4().hex}:"
    yield prefix
    raw = aioredis.Redis.from_url(REDIS_URL)
    keys = [key async for key in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)
    await raw.aclose()


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str) -> AsyncIterator[Backend]:
    opened: list[Store] = []
    sqlite_path = tmp_path / "not" / "yet" / "there" / "store.db"  # open_store must create the directories

    def open_one() -> Store:
        if request.param == "sqlite":
            store = open_store(f"sqlite:///{sqlite_path}")
        else:
            store = open_store(REDIS_URL, redis_prefix=redis_prefix)
        opened.append(store)
        return store

    yield Backend(request.param, open_one)
    for store in opened:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    opened = backend.open()
    await opened.ping()
    return opened
