"""The in-process bus: one gateway process, fan-out straight to each subscriber's queue."""

from __future__ import annotations

from app.relay.bus.base import DEFAULT_QUEUE_SIZE, EventBus, Fanout, Subscription
from app.store import Event


class MemoryBus(EventBus):
    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._fanout = Fanout()
        self._closed = False

    async def publish(self, request_id: str, event: Event) -> None:
        self._fanout.deliver(request_id, event)

    def subscribe(self, request_id: str) -> Subscription:
        sub = Subscription(self, request_id, self._queue_size)
        if self._closed:
            sub._end()
        else:
            self._fanout.add(sub)  # effective at once: ready() has nothing left to wait for
        return sub

    async def close(self) -> None:
        self._closed = True
        self._fanout.end_all(lagged=False)

    async def _attach(self, sub: Subscription) -> None:
        return None

    async def _detach(self, sub: Subscription) -> None:
        self._fanout.remove(sub)

    def subscriber_count(self, request_id: str) -> int:
        """Local subscribers of a request (for tests and metrics)."""
        return self._fanout.count(request_id)
