"""The fallback poller: asks fal about requests whose webhook is late.

fal's webhook normally tells us a job ended. If it cannot reach us (a misconfigured public URL, a long
outage), requests would stay open forever, holding in-flight slots and never reaching the client's
webhook. One replica at a time (by lease) polls fal for requests quiet for longer than the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from app import completions
from app.errors import GatewayError
from app.operations import FrontDoor, Operation, OpKind
from app.relay import json_body
from app.state import Gateway

log = logging.getLogger("falgate.poller")


class Poller:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._holder = uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="poller")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        interval = self._gateway.settings.poll_interval_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                if await self._gateway.leases.acquire("poller", self._holder, interval * 3):
                    await self.poll_once()
            except Exception:
                log.exception("poller pass failed")

    async def poll_once(self) -> None:
        gateway = self._gateway
        cutoff = time.time() - gateway.settings.webhook_grace_seconds
        for record in await gateway.store.pending_requests(cutoff, limit=100):
            op = Operation(OpKind.STATUS, FrontDoor.REST, record.app_id, request_id=record.request_id)
            try:
                response = await gateway.upstream.send(op, {})
                state = (json_body(response.content) or {}).get("status") if response.status_code < 300 else None
                if state == "COMPLETED":
                    await completions.from_upstream(gateway, record.request_id, record.app_id, source="poll")
                elif isinstance(state, str):
                    await gateway.ledger.progress(record.request_id, state)
                elif response.status_code == 404:
                    # fal no longer knows it (results are kept about an hour): stop holding its slot.
                    await gateway.ledger.finish(record.request_id, "FAILED")
            except GatewayError:
                continue
