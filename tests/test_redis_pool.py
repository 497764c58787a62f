"""One Redis connection pool per process: the store, bus, leases and rate limiter share it.

Counted on real Redis with `CLIENT LIST`: in-process through `open_gateway`, and for a whole gateway
process on a redis-server of the test's own, where every connection but the test's is the gateway's.
A SQLite gateway does not load redis at all.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from app.callers.ratelimit import RateLimiter
from app.gateway import open_gateway
from app.ops.metrics import Metrics
from app.settings import Settings
from app.store import Event, RequestRecord
from app.store.redis_pool import CLIENT_NAME
from tests.redis_server import redis_url
from tests.relay_helpers import KLING, KLING_BODY, read_sse
from tests.servers import ROOT, Server, free_port, start_emulator, start_gateway

REDIS = redis_url(14)  # a db of its own; every key written here is this test's, deleted after


async def _named(name: str) -> list[dict]:
    probe = aioredis.Redis.from_url(REDIS)
    try:
        return [client for client in await probe.client_list() if client.get("name") == name]
    finally:
        await probe.aclose()


async def _eventually_none_named(name: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await _named(name):
        assert time.monotonic() < deadline, f"connections named {name} are still open: {await _named(name)}"
        await asyncio.sleep(0.05)


async def test_the_gateways_parts_share_one_pool_and_close_it_once() -> None:
    name = f"falgate-test-pool-{uuid.uuid4().hex[:8]}"
    url = f"{REDIS}?client_name={name}"
    settings = Settings(_env_file=None, store_url=url, allow_anonymous=True)  # type: ignore[call-arg]
    gateway = await open_gateway(settings, Metrics())
    tag = uuid.uuid4().hex
    try:
        pool = gateway.redis_pool
        assert pool is not None
        # The parts' redis-py clients (the limiter's is the one `limits` built on the pool).
        limiter_client = gateway.limiter._storage.bridge.storage  # type: ignore[union-attr]
        store, bus, leases = gateway.store, gateway.bus, gateway.leases
        clients = [store._redis, bus._publisher, leases._redis, limiter_client]  # type: ignore[attr-defined]
        assert all(client.connection_pool is pool for client in clients)

        # A round trip through each part, one after the other.
        record = RequestRecord(f"req-{tag}", f"caller-{tag}", "kling", "fal-ai/kling-video", time.time(), "IN_QUEUE")
        await gateway.store.record_request(record)
        assert await gateway.store.get_request(record.request_id) == record
        assert await gateway.leases.acquire(f"lease-{tag}", "me", ttl=30)
        assert (await gateway.limiter.hit(f"caller-{tag}", "read")).remaining > 0
        event = Event(1, "status", {"status": "IN_PROGRESS"}, time.time())
        async with gateway.bus.subscribe(record.request_id) as sub:
            await gateway.bus.publish(record.request_id, event)
            assert await asyncio.wait_for(sub.__anext__(), 5) == event
            # One command at a time needs one pooled connection; the bus's subscriber is the other.
            assert len(await _named(name)) == 2
    finally:
        await gateway.aclose()
        probe = aioredis.Redis.from_url(REDIS)
        keys = [key async for key in probe.scan_iter(match=f"*{tag}*")]
        if keys:
            await probe.delete(*keys)
        await probe.aclose()
    await _eventually_none_named(name)


async def test_a_part_opened_on_a_url_keeps_its_own_pool() -> None:
    name = f"falgate-test-pool-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter.for_store(f"{REDIS}?client_name={name}", "5/second", "5/second")
    await limiter.hit(f"caller-{uuid.uuid4().hex}", "submit")
    [connection] = await _named(name)
    assert connection["db"] == "14"
    await limiter.close()
    await _eventually_none_named(name)


def test_a_sqlite_gateway_loads_no_redis() -> None:
    script = (
        "import asyncio, sys, tempfile\n"
        "from app.gateway import open_gateway\n"
        "from app.ops.metrics import Metrics\n"
        "from app.settings import Settings\n"
        "async def main():\n"
        "    url = f'sqlite:///{tempfile.mkdtemp()}/falgate.db'\n"
        "    gateway = await open_gateway(Settings(_env_file=None, store_url=url), Metrics())\n"
        "    await gateway.store.ping()\n"
        "    await gateway.aclose()\n"
        "asyncio.run(main())\n"
        "print(sorted(name for name in sys.modules if name == 'redis' or name.startswith('redis.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- a whole gateway process ---


class _PrivateRedis:
    """A redis-server of this test's own on a free port: every client on it but ours is the gateway's."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (apt-get install redis-server)"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tempfile.mkdtemp(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def private_redis() -> Iterator[_PrivateRedis]:
    server = _PrivateRedis()
    yield server
    server.stop()


def _gateway_connections(private: _PrivateRedis) -> list[dict]:
    with redis.Redis.from_url(private.url) as probe:
        mine = probe.client_id()
        return [client for client in probe.client_list() if int(client["id"]) != mine]


def test_a_gateway_on_redis_holds_one_pool(private_redis: _PrivateRedis) -> None:
    emulator = start_emulator(job_seconds=0.5)
    # The poller runs every 0.2 s on every request (its lease and its scan), alongside everything else.
    gateway: Server | None = None
    try:
        gateway = start_gateway(
            emulator,
            FALGATE_STORE_URL=private_redis.url,
            FALGATE_POLL_INTERVAL_SECONDS="0.2",
            FALGATE_WEBHOOK_GRACE_SECONDS="0",
        )
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for _ in range(3):
                # Submit (rate limiter, budget and slot, the request's record), then watch it to the end
                # (a bus subscription, the status-stream watcher's lease, events published and stored).
                submitted = client.post(f"/{KLING}", json=KLING_BODY)
                assert submitted.status_code == 200, submitted.text
                request_id = submitted.json()["request_id"]
                read = read_sse(gateway.url, f"/v1/requests/{request_id}/events", deadline=15)
                assert read.closed and read.kinds[-1] == "completed", read.kinds
                assert client.get(submitted.json()["status_url"]).json()["status"] == "COMPLETED"
        connections = _gateway_connections(private_redis)
        # Every connection has the shared pool's settings (its name), whichever part made it. A pool per
        # part (store, publisher, subscriber, leases, limiter) held 8 connections after this flow, none
        # named; one pool holds what was in flight at once (3 here) plus the bus's subscriber.
        assert {c["name"] for c in connections} == {CLIENT_NAME}, connections
        assert 2 <= len(connections) <= 5, connections
    finally:
        if gateway is not None:
            gateway.stop()
        emulator.stop()
    deadline = time.monotonic() + 5
    while _gateway_connections(private_redis):
        assert time.monotonic() < deadline, "the stopped gateway left connections open"
        time.sleep(0.05)
