"""Following a request's events without gaps or repeats: the store for what's past, the bus for what's new."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.relay.bus.base import EventBus
from app.store import Event, Store

TERMINAL_EVENT_KINDS = frozenset({"completed", "error"})
_PAGE = 1000


async def follow(store: Store, bus: EventBus, request_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
    """Every event of the request with seq > after_seq, in seq order, exactly once, up to the terminal one.

    Relies on the relay's order of work: append to the store first, publish second. Subscribing before
    reading the store means nothing published in between falls through; a seq gap on the bus (another
    replica's event still in flight, or one this subscriber missed) is filled from the store; a lagged
    subscription (overflow, lost connection) is replaced after catching up from the store.
    Ends after a "completed"/"error" event, or when the bus closes. Raises BusUnavailable/StoreUnavailable.
    """
    last = after_seq
    while True:
        async with bus.subscribe(request_id) as sub:
            async for event in _from_store(store, request_id, last):
                yield event
                last = event.seq
                if event.kind in TERMINAL_EVENT_KINDS:
                    return
            if await store.has_terminal_event(request_id):
                # The log closed at or before `last` (a resume past the end), or just now: hand out
                # anything appended since the read above, then stop instead of waiting forever.
                async for event in _from_store(store, request_id, last):
                    yield event
                return
            async for event in sub:
                if event.seq <= last:
                    continue  # already handed out from the store
                batch = [event] if event.seq == last + 1 else [e async for e in _from_store(store, request_id, last)]
                for item in batch:
                    yield item
                    last = item.seq
                    if item.kind in TERMINAL_EVENT_KINDS:
                        return
            if not sub.lagged:
                return  # the bus closed


async def _from_store(store: Store, request_id: str, after_seq: int) -> AsyncIterator[Event]:
    while True:
        page = await store.events_after(request_id, after_seq, limit=_PAGE)
        for event in page:
            yield event
        if len(page) < _PAGE:
            return
        after_seq = page[-1].seq
