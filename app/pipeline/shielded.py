"""Upstream calls that must finish even when the request that started them is cancelled.

Once a submit's bytes may have reached fal, fal runs (and bills) the job whether or not our caller is
still there: cancelling the request (uvicorn does, to every unfinished request, when a shutdown's
grace runs out) must not cancel the wait for fal's answer and the recording of it, or the job would
be refunded and forgotten. Each such call runs as a task of its own that the request only awaits
through `asyncio.shield`, and the lifespan's shutdown drains them before closing the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("falgate.pipeline")


class ShieldedCalls:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, call: Coroutine[Any, Any, T]) -> T:
        """`call`'s result; cancelling the awaiting task leaves `call` running to its end."""
        task = asyncio.create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.done() or current is None:
                raise
            # Cancelled once (a shutdown's grace ran out): the caller's answer is fal's, and the connection
            # is still open, so keep waiting for it rather than answer a 500. The shutdown drains `task`
            # meanwhile. A second cancellation is not swallowed.
            current.uncancel()
            return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Retrieved here, so an orphaned call's error is logged once rather than as "never retrieved".
        if not task.cancelled() and task.exception() is not None:
            log.info("a shielded upstream call ended with %s", type(task.exception()).__name__)

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` for the calls still running (at shutdown, before the store closes)."""
        if not self._tasks:
            return
        log.warning("waiting for %d upstream call(s) fal may be running", len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        if pending:
            log.error("%d upstream call(s) still unanswered at shutdown", len(pending))
