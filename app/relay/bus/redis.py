"""The bus across replicas: Redis pub/sub on channel `{prefix}events:{request_id}`.

One pub/sub connection per process, whatever the number of watchers: the first local subscriber of a
request SUBSCRIBEs its channel, the last one to leave UNSUBSCRIBEs it, and a reader task fans each
message out to the local subscribers. Publishing is a plain PUBLISH on the process's shared pool.

The pub/sub connection is a bare redis-py Connection (RESP2; the shared pool's address and settings,
but not one of its connections, since a subscribed connection can't serve commands) rather than
redis-py's PubSub, because PubSub silently reconnects and resubscribes: whatever was published
meanwhile would be lost without anyone knowing. Here a lost connection (an error, or no reply to our
pings for three intervals) ends every subscription with `lagged` set, so consumers re-read from the
store; the next subscriber opens a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app.relay.bus.base import (
    DEFAULT_QUEUE_SIZE,
    BusUnavailable,
    EventBus,
    Fanout,
    Subscription,
    decode_event,
    encode_event,
)
from app.store import Event
from app.store.redis_pool import COMMAND_TIMEOUT, redis_client, subscriber_connection

log = logging.getLogger("falgate.bus")

_Waiter = tuple[int, "asyncio.Future[None]"]


class _Link:
    """One pub/sub connection: the channels it subscribed, Redis's confirmations, its reader and pinger."""

    def __init__(self, conn: AbstractConnection, bus: RedisBus, ping_interval: float) -> None:
        self.conn = conn
        self.alive = True
        self.channels: set[bytes] = set()  # SUBSCRIBE sent, no UNSUBSCRIBE since
        # Redis answers a connection's commands in order, so the n-th "subscribe" reply for a channel
        # confirms the n-th SUBSCRIBE we sent for it (even across an UNSUBSCRIBE/SUBSCRIBE flip).
        self._sent: Counter[bytes] = Counter()
        self._confirmed: Counter[bytes] = Counter()
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._bus = bus
        self._ping_interval = ping_interval
        self._reader = asyncio.create_task(self._read(), name="falgate-bus-reader")
        self._pinger = asyncio.create_task(self._ping(), name="falgate-bus-pinger")

    async def _send(self, *args: Any) -> None:
        # Connection.send_command would quietly reconnect a dropped socket, unsubscribed; refuse instead.
        if not self.alive or not self.conn.is_connected:
            raise RedisConnectionError("the pub/sub connection is gone")
        await self.conn.send_command(*args, check_health=False)

    async def subscribe(self, channel: bytes) -> asyncio.Future[None]:
        """Subscribes `channel` (once) and returns a future that resolves when Redis confirmed it."""
        if channel not in self.channels:
            self.channels.add(channel)
            self._sent[channel] += 1
            await self._send("SUBSCRIBE", channel)
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        target = self._sent[channel]
        if self._confirmed[channel] >= target:
            confirmed.set_result(None)
        else:
            self._waiters.setdefault(channel, []).append((target, confirmed))
        return confirmed

    async def unsubscribe(self, channel: bytes) -> None:
        if channel in self.channels:
            self.channels.discard(channel)
            await self._send("UNSUBSCRIBE", channel)

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return  # b"PONG": a ping while nothing was subscribed
        kind = reply[0]
        if kind == b"message":
            self._bus._on_message(reply[1], reply[2])
        elif kind == b"subscribe":
            channel = reply[1]
            self._confirmed[channel] += 1
            pending = self._waiters.pop(channel, [])
            for target, waiter in pending:
                if target <= self._confirmed[channel]:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    self._waiters.setdefault(channel, []).append((target, waiter))
        # "unsubscribe" and "pong" replies need nothing: they only prove the connection is alive.

    async def _read(self) -> None:
        try:
            while True:
                # The pinger guarantees a reply every interval; three silent intervals is a dead link.
                reply = await self.conn.read_response(timeout=self._ping_interval * 3, disconnect_on_error=False)
                if reply is None:
                    raise TimeoutError("no reply from Redis, not even to a ping")
                self._handle(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means the same: the link is gone
            if self.alive:
                log.warning("event bus lost its Redis connection: %s", exc)
        finally:
            self._die()
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await self._send("PING")
            except (RedisError, OSError):
                self.kill()
                return

    def kill(self) -> None:
        """Give up on this connection: its subscribers are lagged and its reader disconnects it."""
        self._die()
        self._reader.cancel()

    def _die(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self._bus._lost(self)  # lag every subscriber first, so ready() waiters wake up to a lagged sub
        for waiters in self._waiters.values():
            for _, waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiters.clear()
        if self._pinger is not asyncio.current_task():
            self._pinger.cancel()

    async def close(self) -> None:
        self.kill()
        await asyncio.gather(self._reader, self._pinger, return_exceptions=True)


class RedisBus(EventBus):
    def __init__(
        self,
        redis: str | aioredis.ConnectionPool,
        *,
        prefix: str = "falgate:",
        queue_size: int = DEFAULT_QUEUE_SIZE,
        ping_interval: float = 5.0,
        timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        """`redis`: the process's shared pool (left open by `close`), or a URL for a pool of the bus's own.

        `timeout` bounds the wait for Redis to confirm a SUBSCRIBE.
        """
        self._channel_prefix = f"{prefix}events:".encode()
        self._queue_size = queue_size
        self._ping_interval = ping_interval
        self._timeout = timeout
        self._publisher = redis_client(redis)
        self._fanout = Fanout(on_empty=self._schedule_unsubscribe)
        self._link: _Link | None = None
        self._lock = asyncio.Lock()  # one SUBSCRIBE/UNSUBSCRIBE decision at a time
        self._unsubscribing: dict[str, asyncio.Task[None]] = {}  # the latest per request, for _detach to await
        self._background: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones
        self._closed = False

    def _channel(self, request_id: str) -> bytes:
        return self._channel_prefix + request_id.encode()

    async def publish(self, request_id: str, event: Event) -> None:
        if self._closed:
            raise BusUnavailable("the bus is closed")
        try:
            await self._publisher.publish(self._channel(request_id), encode_event(event))
        except (RedisError, OSError) as exc:
            raise BusUnavailable(f"redis publish: {exc}") from exc

    def subscribe(self, request_id: str) -> Subscription:
        sub = Subscription(self, request_id, self._queue_size)
        if self._closed:
            sub._end()
        else:
            self._fanout.add(sub)
        return sub

    def subscriber_count(self, request_id: str) -> int:
        """Local subscribers of a request (for tests and metrics)."""
        return self._fanout.count(request_id)

    async def close(self) -> None:
        self._closed = True
        self._fanout.end_all(lagged=False)
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        background = list(self._background)
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self._publisher.aclose()

    # --- the pub/sub connection ---

    async def _connected_link(self) -> _Link:
        if self._closed:
            raise BusUnavailable("the bus is closed")
        if self._link is None or not self._link.alive:
            conn = subscriber_connection(self._publisher.connection_pool)
            try:
                await conn.connect()
            except (RedisError, OSError) as exc:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
                raise BusUnavailable(f"redis pub/sub: {exc}") from exc
            self._link = _Link(conn, self, self._ping_interval)
        return self._link

    async def _attach(self, sub: Subscription) -> None:
        async with self._lock:
            if sub.ended:  # lagged by a lost connection, or closed, before it got here
                return
            try:
                link = await self._connected_link()
            except BusUnavailable:
                self._give_up(sub)
                raise
            try:
                confirmed = await link.subscribe(self._channel(sub.request_id))
            except (RedisError, OSError) as exc:
                link.kill()
                self._give_up(sub)
                raise BusUnavailable(f"redis pub/sub: {exc}") from exc
        try:
            await asyncio.wait_for(asyncio.shield(confirmed), self._timeout)
        except TimeoutError:
            # Redis took the SUBSCRIBE but never answered: the link is dead, which lags this subscriber
            # (and every other one on it); they come back on a fresh connection.
            link.kill()

    def _give_up(self, sub: Subscription) -> None:
        sub._end()
        self._fanout.remove(sub)

    async def _detach(self, sub: Subscription) -> None:
        self._fanout.remove(sub)
        pending = self._unsubscribing.get(sub.request_id)
        if pending is not None:
            # Shielded: a watcher cancelled while leaving must not leave the channel subscribed.
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(pending)

    def _schedule_unsubscribe(self, request_id: str) -> None:
        # Always a new task, even if one is queued: an earlier one may already have decided to keep
        # the channel. Each re-checks under the lock, so extra ones are harmless.
        if self._closed or self._link is None:
            return
        task = asyncio.get_running_loop().create_task(self._unsubscribe(request_id))
        self._unsubscribing[request_id] = task
        self._background.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            self._background.discard(done)
            if self._unsubscribing.get(request_id) is done:
                del self._unsubscribing[request_id]

        task.add_done_callback(forget)

    async def _unsubscribe(self, request_id: str) -> None:
        async with self._lock:
            if self._fanout.has(request_id):
                return  # a new watcher arrived meanwhile: keep the channel
            link = self._link
            if link is None or not link.alive:
                return
            try:
                await link.unsubscribe(self._channel(request_id))
            except (RedisError, OSError):
                link.kill()

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if not channel.startswith(self._channel_prefix):
            return
        try:
            event = decode_event(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("event bus dropped a malformed message on %r: %s", channel, exc)
            return
        self._fanout.deliver(channel[len(self._channel_prefix) :].decode(), event)

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
            if not self._closed:
                self._fanout.end_all(lagged=True)
