"""The event bus (in-process and Redis pub/sub), `follow`, and leases, against a real Redis on db 15."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.relay.bus import BusUnavailable, EventBus, Subscription, follow, open_bus
from app.relay.bus.memory import MemoryBus
from app.relay.bus.redis import RedisBus
from app.relay.leases import Leases, MemoryLeases, RedisLeases, open_leases
from app.store import Event, StoreUnavailable, open_store
from tests.store_backends import REDIS_URL

pytestmark = pytest.mark.asyncio(loop_scope="session")


BusFactory = Callable[..., EventBus]


@pytest.fixture
async def raw_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def make_bus(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[BusFactory]:
    """Opens buses of one kind; with Redis, each is another "replica" on the same channels."""
    opened: list[EventBus] = []

    def open_one(**options: object) -> EventBus:
        if request.param == "memory":
            bus: EventBus = MemoryBus(**options)  # type: ignore[arg-type]
        else:
            bus = RedisBus(REDIS_URL, prefix=redis_prefix, **options)  # type: ignore[arg-type]
        opened.append(bus)
        return bus

    yield open_one
    for bus in opened:
        await bus.close()


@pytest.fixture
async def redis_bus(redis_prefix: str) -> AsyncIterator[Callable[..., RedisBus]]:
    opened: list[RedisBus] = []

    def open_one(url: str = REDIS_URL, **options: object) -> RedisBus:
        bus = RedisBus(url, prefix=redis_prefix, **options)  # type: ignore[arg-type]
        opened.append(bus)
        return bus

    yield open_one
    for bus in opened:
        await bus.close()


def _event(seq: int, kind: str = "logs") -> Event:
    return Event(seq, kind, {"message": f"step {seq}", "nested": {"list": [seq, "\u00e9"]}}, 1700000000.0 + seq)


async def _take(sub: Subscription, count: int, timeout: float = 5.0) -> list[Event]:
    async def take() -> list[Event]:
        got: list[Event] = []
        async for event in sub:
            got.append(event)
            if len(got) == count:
                break
        return got

    return await asyncio.wait_for(take(), timeout)


async def _drain(sub: Subscription, timeout: float = 5.0) -> list[Event]:
    """Everything until the subscription ends."""

    async def drain() -> list[Event]:
        return [event async for event in sub]

    return await asyncio.wait_for(drain(), timeout)


async def _numsub(raw: aioredis.Redis, channel: str) -> int:
    [(_, count)] = await raw.pubsub_numsub(channel)
    return int(count)


async def _eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- both buses ---


async def test_events_arrive_in_order(make_bus: BusFactory) -> None:
    bus = make_bus()
    async with bus.subscribe("r") as sub:
        for seq in range(1, 101):
            await bus.publish("r", _event(seq))
        assert await _take(sub, 100) == [_event(seq) for seq in range(1, 101)]


async def test_fan_out_to_every_watcher_of_that_request_only(make_bus: BusFactory) -> None:
    bus = make_bus()
    subs = [bus.subscribe("r") for _ in range(50)]
    other = bus.subscribe("other")
    await asyncio.gather(*(sub.ready() for sub in [*subs, other]))
    await bus.publish("r", _event(1))
    await bus.publish("r", _event(2))
    results = await asyncio.gather(*(_take(sub, 2) for sub in subs))
    assert all(got == [_event(1), _event(2)] for got in results)
    await bus.publish("other", _event(7))
    assert await _take(other, 1) == [_event(7)]  # and nothing of "r" came before it
    for sub in [*subs, other]:
        await sub.close()


async def test_closing_a_subscription_unregisters_it(make_bus: BusFactory) -> None:
    bus = make_bus()
    stays, leaves = bus.subscribe("r"), bus.subscribe("r")
    await asyncio.gather(stays.ready(), leaves.ready())
    assert bus.subscriber_count("r") == 2  # type: ignore[attr-defined]
    await leaves.close()
    assert bus.subscriber_count("r") == 1  # type: ignore[attr-defined]
    await bus.publish("r", _event(1))
    assert await _take(stays, 1) == [_event(1)]
    assert await _drain(leaves) == [] and not leaves.lagged
    await stays.close()
    assert bus.subscriber_count("r") == 0  # type: ignore[attr-defined]
    await bus.publish("r", _event(2))  # nobody listens: fine


async def test_an_overflowing_watcher_is_lagged_without_blocking_the_publisher(make_bus: BusFactory) -> None:
    bus = make_bus(queue_size=10)
    slow, fast = bus.subscribe("r"), bus.subscribe("r")
    await asyncio.gather(slow.ready(), fast.ready())
    received: list[Event] = []

    async def consume() -> None:
        async for event in fast:
            received.append(event)
            if len(received) == 100:
                return

    consumer = asyncio.create_task(consume())
    started = time.monotonic()
    for seq in range(1, 101):
        await bus.publish("r", _event(seq))
        await asyncio.sleep(0)  # let the fast consumer keep up, as a live one would
    assert time.monotonic() - started < 2
    await asyncio.wait_for(consumer, 5)
    assert [e.seq for e in received] == list(range(1, 101))
    # The slow one keeps what it had queued, then ends, lagged: it re-reads the rest from the store.
    assert [e.seq for e in await _drain(slow)] == list(range(1, 11))
    assert slow.lagged and not fast.lagged
    assert bus.subscriber_count("r") == 1  # type: ignore[attr-defined]
    await fast.close()
    await slow.close()


async def test_closing_the_bus_ends_subscriptions_unlagged(make_bus: BusFactory) -> None:
    bus = make_bus()
    sub = bus.subscribe("r")
    await sub.ready()
    waiting = asyncio.create_task(_drain(sub))
    await asyncio.sleep(0.05)
    await bus.close()
    assert await waiting == [] and not sub.lagged
    late = bus.subscribe("r")
    assert await _drain(late) == []


async def test_follow_replays_then_streams_without_gaps_or_repeats(make_bus: BusFactory, tmp_path: Path) -> None:
    bus = make_bus()
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:

        async def emit(kind: str = "logs", *, publish: bool = True, terminal: bool = False) -> None:
            event = await store.append_event("r", kind, {"k": kind}, terminal=terminal)
            assert event is not None
            if publish:
                await bus.publish("r", event)

        for _ in range(3):
            await emit(publish=False)  # happened before anyone watched
        seen: list[int] = []
        watcher = asyncio.create_task(_collect(follow(store, bus, "r", after_seq=1), seen))
        await _eventually(lambda: len(seen) == 2)
        await emit()
        await emit(publish=False)  # another replica's event, its publish still in flight ...
        await emit()  # ... so this one arrives with a gap, which the store fills
        await emit("completed", terminal=True)
        await asyncio.wait_for(watcher, 5)
        assert seen == [2, 3, 4, 5, 6, 7]


async def test_follow_recovers_from_lagging(make_bus: BusFactory, tmp_path: Path) -> None:
    bus = make_bus(queue_size=2)
    async with open_store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        seen: list[int] = []

        async def slow_collect() -> None:
            async for event in follow(store, bus, "r"):
                seen.append(event.seq)
                await asyncio.sleep(0.01)  # a slow browser

        watcher = asyncio.create_task(slow_collect())
        await asyncio.sleep(0.1)
        for i in range(30):
            event = await store.append_event("r", "completed" if i == 29 else "logs", {}, terminal=i == 29)
            assert event is not None
            await bus.publish("r", event)
        await asyncio.wait_for(watcher, 10)
        assert seen == list(range(1, 31))


async def _collect(events: AsyncIterator[Event], into: list[int]) -> None:
    async for event in events:
        into.append(event.seq)


# --- Redis only ---


async def test_an_event_published_on_one_replica_reaches_watchers_on_another(
    redis_bus: Callable[..., RedisBus],
) -> None:
    a, b = redis_bus(), redis_bus()
    async with b.subscribe("r") as on_b, a.subscribe("r") as on_a:
        await a.publish("r", _event(1))
        await b.publish("r", _event(2))
        assert await _take(on_b, 2) == [_event(1), _event(2)]
        assert await _take(on_a, 2) == [_event(1), _event(2)]


async def test_a_thousand_watchers_cost_one_redis_subscription(
    redis_bus: Callable[..., RedisBus], redis_prefix: str, raw_redis: aioredis.Redis
) -> None:
    bus, publisher = redis_bus(), redis_bus()
    channel = f"{redis_prefix}events:r"
    subs = [bus.subscribe("r") for _ in range(1000)]
    await asyncio.gather(*(sub.ready() for sub in subs))
    assert await _numsub(raw_redis, channel) == 1
    await publisher.publish("r", _event(1))
    results = await asyncio.gather(*(_take(sub, 1) for sub in subs))
    assert all(got == [_event(1)] for got in results)

    await asyncio.gather(*(sub.close() for sub in subs[:999]))
    assert await _numsub(raw_redis, channel) == 1  # one watcher left
    await subs[999].close()
    await _eventually(lambda: _is_zero(raw_redis, channel))


async def _is_zero(raw: aioredis.Redis, channel: str) -> bool:
    return await _numsub(raw, channel) == 0


async def test_resubscribing_while_the_last_watcher_leaves(
    redis_bus: Callable[..., RedisBus], redis_prefix: str, raw_redis: aioredis.Redis
) -> None:
    bus = redis_bus()
    channel = f"{redis_prefix}events:r"
    for _ in range(20):  # SUBSCRIBE/UNSUBSCRIBE flips interleave; every ready() must still be real
        sub = bus.subscribe("r")
        await sub.ready()
        leaving = asyncio.create_task(sub.close())
        await asyncio.sleep(0)
    await leaving
    async with bus.subscribe("r") as sub:
        assert await _numsub(raw_redis, channel) == 1
        await bus.publish("r", _event(1))
        assert await _take(sub, 1) == [_event(1)]
    await _eventually(lambda: _is_zero(raw_redis, channel))


async def test_a_lost_connection_lags_watchers_and_the_next_ones_reconnect(
    redis_bus: Callable[..., RedisBus], raw_redis: aioredis.Redis
) -> None:
    name = f"falgate-test-bus-{uuid.uuid4().hex[:8]}"
    bus = redis_bus(url=f"{REDIS_URL}?client_name={name}")  # the bus's connections carry the pool's name
    sub = bus.subscribe("r")
    await sub.ready()
    [client] = [c for c in await raw_redis.client_list() if c.get("name") == name]
    await raw_redis.client_kill_filter(_id=client["id"])
    assert await _drain(sub) == [] and sub.lagged

    async with bus.subscribe("r") as again:
        await bus.publish("r", _event(1))
        assert await _take(again, 1) == [_event(1)]
        assert not again.lagged


async def test_a_silent_redis_is_noticed_by_pings() -> None:
    async with _FreezableProxy() as proxy:
        bus = RedisBus(proxy.url, prefix=f"falgate-test:{uuid.uuid4().hex}:", ping_interval=0.1)
        try:
            sub = bus.subscribe("r")
            await sub.ready()
            await asyncio.sleep(0.35)  # several pings answered: alive
            assert not sub.ended
            proxy.frozen = True  # the connection stays open, but nothing comes back any more
            assert await _drain(sub, timeout=3) == [] and sub.lagged
        finally:
            await bus.close()


class _FreezableProxy:
    """A TCP proxy to the test Redis that can stop relaying replies (a half-dead connection)."""

    def __init__(self) -> None:
        self.frozen = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/15"

    async def __aenter__(self) -> _FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
        redis_r, redis_w = await asyncio.open_connection(host, int(port))
        self._writers += [client_w, redis_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, freezable: bool) -> None:
            while data := await src.read(65536):
                if not (freezable and self.frozen):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(client_r, redis_w, False), pipe(redis_r, client_w, True), return_exceptions=True)


async def test_an_unreachable_redis_is_unavailable() -> None:
    bus = RedisBus(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(BusUnavailable):
            async with bus.subscribe("r"):
                pass
        with pytest.raises(BusUnavailable):
            await bus.publish("r", _event(1))
        assert time.monotonic() - started < 5
    finally:
        await bus.close()


async def test_open_bus_picks_by_url() -> None:
    memory = open_bus("sqlite:///./falgate.db")
    redis_bus = open_bus(REDIS_URL)
    assert isinstance(memory, MemoryBus) and isinstance(redis_bus, RedisBus)
    await memory.close()
    await redis_bus.close()
    assert isinstance(open_leases("sqlite:///:memory:"), MemoryLeases)
    leases = open_leases(REDIS_URL)
    assert isinstance(leases, RedisLeases)
    await leases.close()


# --- leases ---


@pytest.fixture(params=["memory", "redis"])
async def make_leases(request: pytest.FixtureRequest, redis_prefix: str) -> AsyncIterator[Callable[[], Leases]]:
    """Opens lease tables; with Redis each is another replica's, with memory they are one shared table."""
    shared = MemoryLeases()
    opened: list[Leases] = []

    def open_one() -> Leases:
        if request.param == "memory":
            return shared
        leases = RedisLeases(REDIS_URL, prefix=redis_prefix)
        opened.append(leases)
        return leases

    yield open_one
    for leases in opened:
        await leases.close()


async def test_a_lease_is_exclusive_until_released_by_its_holder(make_leases: Callable[[], Leases]) -> None:
    a, b = make_leases(), make_leases()
    assert await a.acquire("poller", "replica-a", ttl=30)
    assert not await b.acquire("poller", "replica-b", ttl=30)
    assert await b.acquire("stream:r1", "replica-b", ttl=30)  # another name is another lease
    await b.release("poller", "replica-b")  # not the holder: no effect
    assert not await b.acquire("poller", "replica-b", ttl=30)
    await a.release("poller", "replica-a")
    assert await b.acquire("poller", "replica-b", ttl=30)
    assert not await a.acquire("poller", "replica-a", ttl=30)


async def test_a_lease_lapses_unless_extended(make_leases: Callable[[], Leases]) -> None:
    a, b = make_leases(), make_leases()
    assert await a.acquire("poller", "replica-a", ttl=0.3)
    await asyncio.sleep(0.2)
    assert await a.acquire("poller", "replica-a", ttl=0.3)  # extends
    await asyncio.sleep(0.2)  # past the first ttl, within the extension
    assert not await b.acquire("poller", "replica-b", ttl=0.3)
    await asyncio.sleep(0.2)
    assert await b.acquire("poller", "replica-b", ttl=30)
    await a.release("poller", "replica-a")  # its lease lapsed: it can't free its successor's
    assert not await a.acquire("poller", "replica-a", ttl=30)
    with pytest.raises(ValueError):
        await a.acquire("poller", "replica-a", ttl=0)


async def test_racing_replicas_get_one_lease(make_leases: Callable[[], Leases]) -> None:
    a, b = make_leases(), make_leases()
    results = await asyncio.gather(*((a, b)[i % 2].acquire("poller", f"replica-{i}", ttl=30) for i in range(20)))
    assert results.count(True) == 1


async def test_leases_on_an_unreachable_redis_are_unavailable() -> None:
    leases = RedisLeases(f"redis://127.0.0.1:{_closed_port()}/0")
    with pytest.raises(StoreUnavailable):
        await leases.acquire("poller", "a", ttl=1)
    await leases.close()
