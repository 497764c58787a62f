"""The event bus's contract: live delivery of a request's events to whoever watches it, on any replica.

The bus is a doorbell, not the record: every event is appended to the store first (which gives it
its seq) and published second. A subscriber can therefore miss nothing for good: when its queue
overflowed or the bus lost its connection, the subscription ends with `lagged` set, and the consumer
re-reads from the store by seq and subscribes again. `app.relay.bus.follow` does exactly that.

    async with bus.subscribe(request_id) as sub:   # registered (on Redis: confirmed) on entry
        async for event in sub: ...                # ends when lagged, closed, or the bus closes
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, Self

from app.store import Event, StoreUnavailable

DEFAULT_QUEUE_SIZE = 256


class BusUnavailable(StoreUnavailable):
    """The bus's Redis can't be reached; a StoreUnavailable, since it is the same Redis."""


def encode_event(event: Event) -> bytes:
    return json.dumps({"seq": event.seq, "kind": event.kind, "data": event.data, "at": event.at}).encode()


def decode_event(raw: bytes | str) -> Event:
    fields = json.loads(raw)
    return Event(int(fields["seq"]), str(fields["kind"]), dict(fields["data"]), float(fields["at"]))


class _Owner(Protocol):
    """What a subscription needs from its bus."""

    async def _attach(self, sub: Subscription) -> None: ...

    async def _detach(self, sub: Subscription) -> None: ...


class Subscription:
    """One watcher's view of one request: an async iterator of Events over a bounded queue.

    The iteration ends when the queue overflowed or the bus lost its connection (`lagged` is then
    True: re-read from the store and subscribe again), or when the subscription or bus was closed
    (`lagged` False). A slow watcher never blocks publishers nor grows memory past `maxsize`.
    """

    def __init__(self, owner: _Owner, request_id: str, maxsize: int) -> None:
        self.request_id = request_id
        self.lagged = False
        self._owner = owner
        self._maxsize = maxsize
        self._items: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._ended = False  # no more events will arrive; what is queued is still handed out
        self._attached = False

    @property
    def ended(self) -> bool:
        return self._ended

    async def ready(self) -> None:
        """Returns once events published from now on will arrive (on Redis: SUBSCRIBE confirmed).

        Raises BusUnavailable if the bus can't subscribe at all.
        """
        if not self._attached:
            self._attached = True
            await self._owner._attach(self)

    async def close(self) -> None:
        self._end()
        await self._owner._detach(self)

    # --- called by the bus ---

    def _push(self, event: Event) -> bool:
        """Queues `event`; False (and the subscription ends, lagged) if the queue was full."""
        if self._ended:
            return False
        if len(self._items) >= self._maxsize:
            self._lag()
            return False
        self._items.append(event)
        self._wake.set()
        return True

    def _lag(self) -> None:
        if not self._ended:
            self.lagged = True
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._wake.set()

    # --- protocols ---

    async def __aenter__(self) -> Self:
        try:
            await self.ready()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        await self.ready()
        while True:
            if self._items:
                return self._items.popleft()
            if self._ended:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()


class Fanout:
    """A process's local subscribers by request id; shared by both buses."""

    def __init__(self, on_empty: Callable[[str], None] = lambda request_id: None) -> None:
        self._subs: dict[str, dict[Subscription, None]] = {}  # a dict is an insertion-ordered set
        self._on_empty = on_empty

    def add(self, sub: Subscription) -> None:
        self._subs.setdefault(sub.request_id, {})[sub] = None

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.request_id)
        if subs is None or sub not in subs:
            return
        del subs[sub]
        if not subs:
            del self._subs[sub.request_id]
            self._on_empty(sub.request_id)

    def has(self, request_id: str) -> bool:
        return request_id in self._subs

    def count(self, request_id: str) -> int:
        return len(self._subs.get(request_id, ()))

    def deliver(self, request_id: str, event: Event) -> None:
        subs = self._subs.get(request_id)
        if not subs:
            return
        overflowed = [sub for sub in subs if not sub._push(event)]
        for sub in overflowed:  # lagged: it gets nothing more, so stop fanning out to it now
            self.remove(sub)

    def end_all(self, *, lagged: bool) -> None:
        """Ends every subscription (lagged: they missed something) and forgets them."""
        subs = [sub for group in self._subs.values() for sub in group]
        self._subs.clear()
        for sub in subs:
            if lagged:
                sub._lag()
            else:
                sub._end()


class EventBus(ABC):
    """Fan-out of a request's events to its watchers: `MemoryBus` (one process) or `RedisBus` (replicas)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def publish(self, request_id: str, event: Event) -> None:
        """Hands `event` to every current watcher of the request. Store it first (see the module doc)."""

    @abstractmethod
    def subscribe(self, request_id: str) -> Subscription:
        """A new subscription; it receives events once `await sub.ready()` (or `async with`) returned."""

    @abstractmethod
    async def close(self) -> None:
        """Ends every subscription (not lagged) and releases connections."""
