"""Single flight for status polls of requests in flight: one upstream call however many pollers.

Per replica and per (request, logs flag). Concurrent polls wait for the same call; a successful
answer is reused for `max_age` seconds after it arrived. Failures and non-2xx answers are shared only
with the polls already waiting, never reused by later ones (a retry must reach fal again).
Every poll reaching here has already passed its own authentication, rate limit and ownership check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class _Flight:
    task: asyncio.Future
    done_at: float | None = None


class StatusFlights:
    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    async def share(
        self, key: Hashable, max_age: float, call: Callable[[], Awaitable[Any]], reusable: Callable[[Any], bool]
    ) -> Any:
        flight = self._flights.get(key)
        if flight is not None and (flight.done_at is None or time.monotonic() - flight.done_at < max_age):
            # shield: one poller leaving (its client went away) must not cancel the call the others await.
            return await asyncio.shield(flight.task)
        flight = _Flight(asyncio.ensure_future(call()))
        self._flights[key] = flight
        flight.task.add_done_callback(lambda task: self._landed(key, flight, max_age, reusable))
        return await asyncio.shield(flight.task)

    def _landed(self, key: Hashable, flight: _Flight, max_age: float, reusable: Callable[[Any], bool]) -> None:
        task = flight.task
        ok = not task.cancelled() and task.exception() is None and reusable(task.result())
        if not ok or max_age <= 0:
            self._forget(key, flight)
            return
        flight.done_at = time.monotonic()
        asyncio.get_running_loop().call_later(max_age, self._forget, key, flight)

    def _forget(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
