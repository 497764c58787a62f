"""The fallback poller: asks fal about requests whose webhook is late.

fal's webhook normally tells us a job ended. If it cannot reach us (a misconfigured public URL, a long
outage), requests would stay open forever, holding in-flight slots and never reaching the client's
webhook. One replica at a time (by lease) polls fal for requests quiet for longer than the grace period,
a page at a time in order of creation, going round all of them: a page of stuck requests (fal keeps
saying IN_QUEUE) must not starve the ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from app.callers.ledger import Ledger
from app.errors import GatewayError
from app.fal.upstream import UpstreamClient
from app.pipeline.operations import FrontDoor, Operation, OpKind
from app.pipeline.rewrite import json_body
from app.relay.completions import Completions
from app.relay.leases import Leases
from app.store import RequestState, Store

log = logging.getLogger("falgate.poller")

_PAGE = 100


class Poller:
    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        leases: Leases,
        ledger: Ledger,
        completions: Completions,
        *,
        interval: float,
        grace: float,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._leases = leases
        self._ledger = ledger
        self._completions = completions
        self._interval = interval
        self._grace = grace
        self._holder = uuid.uuid4().hex
        self._cursor = 0.0  # created_at of the last request polled; 0 = start from the oldest again
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="poller")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                if await self._leases.acquire("poller", self._holder, self._interval * 3):
                    await self.poll_once()
            except Exception:
                log.exception("poller pass failed")

    async def poll_once(self) -> None:
        cutoff = time.time() - self._grace
        page = await self._store.pending_requests(cutoff, limit=_PAGE, newer_than=self._cursor)
        self._cursor = page[-1].created_at if len(page) == _PAGE else 0.0
        for record in page:
            op = Operation(OpKind.STATUS, FrontDoor.REST, record.app_id, request_id=record.request_id)
            try:
                response = await self._upstream.send(op, {})
                state = (json_body(response.content) or {}).get("status") if response.status_code < 300 else None
                if state == RequestState.COMPLETED:
                    await self._completions.from_upstream(record.request_id, record.app_id, source="poll")
                elif isinstance(state, str):
                    await self._ledger.progress(record.request_id, state)
                elif response.status_code == 404:
                    # fal no longer knows it (results are kept about an hour): stop holding its slot.
                    await self._ledger.finish(record.request_id, RequestState.FAILED)
            except GatewayError:
                continue
