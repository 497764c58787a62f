"""The SQLite store's worker thread: runs whole store calls, one at a time, off the event loop.

A call is one plain function (a whole transaction); the event loop awaits one future for it. Results go
back to the loop in batches (see `Worker`).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# A function to run, the loop that awaits it and its future; None tells the worker to stop.
_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"] | None
_Outcome = tuple["asyncio.Future[Any]", BaseException | None, Any]
_BATCH_MAX = 32  # outcomes held back at most while more work is queued: a bound on the delay it adds


def _settle(outcomes: list[_Outcome]) -> None:
    """On the loop: hand each caller its result. A done future is a cancelled caller: its function
    still ran (a write committed or rolled back as a whole), only the result is dropped."""
    for future, error, result in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class Worker:
    """One daemon thread running submitted functions one at a time, in order.

    Outcomes go back in batches: while more work is queued the loop is not woken for each function,
    which on a busy single core would make it fight the worker for the GIL between every call.
    Daemon, so a store nobody closed can't hold up interpreter exit; an unfinished transaction dies
    with the process and WAL discards it.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        # Touched only by the worker thread: the outcomes held back, and the loop they go to.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outcomes: list[_Outcome] = []

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._thread.ident is None:
            self._thread.start()  # lazily: a store that is never used never starts a thread
        self._jobs.put((fn, loop, future))
        return future

    def stop(self, last: Callable[[], None]) -> asyncio.Future[None]:
        """Run `last` after everything already queued, then end the thread."""
        future = self.submit(last)
        self._jobs.put(None)
        return future

    def flush(self) -> None:
        """On the worker thread, from a function about to wait (for a lock): hand back the outcomes held
        so far now, so their callers don't wait with it."""
        self._outcomes = self._flush(self._loop, self._outcomes)

    def _serve(self) -> None:
        while True:
            try:
                job = self._jobs.get(block=not self._outcomes)
            except queue.Empty:  # caught up: now wake the loop
                self.flush()
                continue
            if job is None:
                self.flush()
                return
            fn, job_loop, future = job
            if job_loop is not self._loop or len(self._outcomes) >= _BATCH_MAX:
                self.flush()
                self._loop = job_loop
            try:
                outcome: _Outcome = (future, None, fn())
            except Exception as exc:
                outcome = (future, exc, None)
            self._outcomes.append(outcome)

    @staticmethod
    def _flush(loop: asyncio.AbstractEventLoop | None, outcomes: list[_Outcome]) -> list[_Outcome]:
        if loop is not None and outcomes:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
                loop.call_soon_threadsafe(_settle, outcomes)
        return []
