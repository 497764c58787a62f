"""The client-webhook outbox: durable deliveries, drained exactly once across replicas, retried >= 24 h.

Deliveries live in the store, so a restart loses none; each attempt first claims its delivery with a
lease, so two replicas never send the same one at once; a 2xx marks it delivered and it is never sent
again unless the caller asks for a redelivery. Each attempt is signed afresh (Standard Webhooks)
with the delivery id as `webhook-id`, stable across retries, so receivers can deduplicate.

Push notifications (app/relay/push/) are deliveries too, with a `push:<device id>` url: the same lease,
schedule and listing, but sent by the device's push service sender, honouring its Retry-After, and
given up at once when retrying cannot help (a dead token, a 4xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pydantic import SecretStr

from app.ops.metrics import Metrics
from app.relay.client_webhooks import WebhookSender, next_delay, sign
from app.relay.push.dispatch import Push, is_push
from app.store import Delivery, Store

log = logging.getLogger("falgate.outbox")

_LEASE_SECONDS = 120.0
_IDLE_SECONDS = 1.0


class Outbox:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        secret: SecretStr | None,
        allow_private: bool,
        retry_scale: float,
        push: Push | None = None,
    ) -> None:
        self._store = store
        self._push = push
        self._metrics = metrics
        self._secret = secret
        self._retry_scale = retry_scale
        self._sender = WebhookSender(allow_private=allow_private)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def wake(self) -> None:
        self._wake.set()

    async def flush(self, deadline: float) -> None:
        """Send what is due now (at shutdown), until nothing is due or the deadline passes."""
        while time.monotonic() < deadline and await self._drain_once():
            pass

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        await self._sender.aclose()
        if self._push is not None:
            await self._push.aclose()

    async def _run(self) -> None:
        while True:
            try:
                busy = await self._drain_once()
                self._metrics.outbox_depth.set(await self._store.outbox_depth())
            except Exception:
                log.exception("outbox pass failed")
                busy = False
            if not busy:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_SECONDS)

    async def _drain_once(self) -> bool:
        claimed = await self._store.claim_deliveries(time.time(), _LEASE_SECONDS, limit=10)
        if claimed:
            await asyncio.gather(*(self._attempt(d) for d in claimed))
        return bool(claimed)

    async def _attempt(self, delivery: Delivery) -> None:
        # Push deliveries (app/relay/push/) share the outbox: only the sending differs.
        if is_push(delivery) and self._push is not None:
            result = await self._push.attempt(delivery)
            give_up, wait_at_least = result.permanent, result.retry_after or 0.0
        else:
            secret = self._secret
            assert secret is not None, "client webhooks are refused at submit without a secret"
            headers = sign(secret.get_secret_value(), delivery.delivery_id, int(time.time()), delivery.body)
            result = await self._sender.send(delivery.url, headers, delivery.body)
            give_up, wait_at_least = False, 0.0
        retry_in = None if result.ok or give_up else next_delay(delivery.attempts + 1)
        next_at = None if retry_in is None else time.time() + max(retry_in * self._retry_scale, wait_at_least)
        await self._store.record_attempt(
            delivery.delivery_id,
            ok=result.ok,
            status_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
            next_attempt_at=next_at,
        )
        outcome = "delivered" if result.ok else ("retry" if next_at else "gave_up")
        self._metrics.deliveries.labels(outcome=outcome).inc()
        if next_at is not None:
            self._metrics.delivery_retries.inc()
        log.info(
            "push attempt" if is_push(delivery) else "client webhook attempt",
            extra={
                "fields": {
                    "delivery_id": delivery.delivery_id,
                    "request_id": delivery.request_id,
                    "attempt": delivery.attempts + 1,
                    "outcome": outcome,
                    "status": result.status_code,
                    "error": result.error,
                }
            },
        )
