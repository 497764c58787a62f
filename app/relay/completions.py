"""The one path by which a request becomes finished, whoever noticed first.

fal's webhook, the shared status-stream watcher, the fallback poller and a caller's own result fetch
can all learn that a job ended, on any replica, in any order, and fal may deliver its webhook twice or
before the submit answer was recorded. Every step here is idempotent, so applying a completion again
changes nothing: the first completion stored wins, the record turns terminal once (freeing the slot
and refunding exactly once), the terminal event is appended once, the client webhook is queued once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson

from app.callers.ledger import Ledger
from app.fal.upstream import UpstreamClient
from app.pipeline.operations import FrontDoor, Operation, OpKind
from app.relay.bus import EventBus
from app.store import Completion, Delivery, DeliveryState, Event, RequestRecord, RequestState, Store

log = logging.getLogger("falgate.completions")

# Deterministic delivery ids make queueing a request's client webhook idempotent across replicas.
_DELIVERY_NAMESPACE = uuid.UUID("6f1d2c1e-8d5e-4a57-9a43-0c5f3e1b7a20")


class Completions:
    """Turns a completion, whoever learned of it, into one stored result and everything that follows."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        ledger: Ledger,
        upstream: UpstreamClient,
        wake_outbox: Callable[[], None],
        queue_push: Callable[[Completion, RequestRecord], Awaitable[None]] | None = None,
    ) -> None:
        self._queue_push = queue_push  # app/relay/push: one outbox delivery per device of the caller
        self._store = store
        self._bus = bus
        self._ledger = ledger
        self._upstream = upstream
        self._wake_outbox = wake_outbox

    async def record(self, completion: Completion) -> bool:
        """Store a completion durably and apply it; False when one was already stored (a duplicate)."""
        if not await self._store.put_completion(completion):
            return False
        await self.apply(completion)
        return True

    async def apply(self, completion: Completion) -> None:
        """Make everything follow from a stored completion. Safe to call any number of times."""
        request_id = completion.request_id
        await self._ledger.finish(request_id, RequestState.COMPLETED if completion.ok else RequestState.FAILED)
        kind = "completed" if completion.ok else "error"
        data = {"request_id": request_id, "status": "OK" if completion.ok else "ERROR", "payload": completion.payload}
        if completion.error:
            data["error"] = completion.error
        await self.publish(request_id, kind, data, terminal=True)
        record = await self._store.get_request(request_id)
        if record is not None and record.client_webhook:
            await self._queue_client_webhook(completion, record.caller_id, record.client_webhook)
        if record is not None and self._queue_push is not None:
            await self._queue_push(completion, record)

    async def publish(self, request_id: str, kind: str, data: dict, *, terminal: bool = False) -> Event | None:
        event = await self._store.append_event(request_id, kind, data, terminal=terminal)
        if event is not None:
            await self._bus.publish(request_id, event)
        return event

    async def from_upstream(self, request_id: str, app_id: str, source: str) -> None:
        """fal says COMPLETED (a poll or the stream) but no webhook has been recorded: fetch the result ourselves."""
        existing = await self._store.get_completion(request_id)
        if existing is not None:
            await self.apply(existing)
            return
        op = Operation(OpKind.RESULT, FrontDoor.REST, app_id, request_id=request_id)
        response = await self._upstream.send(op, {})
        await self.record(completion_from_result(request_id, response.status_code, response.content, source))

    async def _queue_client_webhook(self, completion: Completion, caller_id: str, url: str) -> None:
        now = time.time()
        delivery = Delivery(
            delivery_id=uuid.uuid5(_DELIVERY_NAMESPACE, completion.request_id).hex,
            request_id=completion.request_id,
            caller_id=caller_id,
            url=url,
            body=client_webhook_body(completion),
            state=DeliveryState.PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        if await self._store.enqueue_delivery(delivery):
            self._wake_outbox()


def completion_from_result(request_id: str, status_code: int, content: bytes, source: str) -> Completion:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    payload = body if isinstance(body, dict) else None
    ok = status_code == 200 and payload is not None
    error = None
    if not ok:
        detail = payload.get("detail") if payload else None
        error = detail if isinstance(detail, str) else f"fal answered {status_code}"
    return Completion(request_id, ok, payload, error, time.time(), source)


def completion_from_webhook(body: dict, request_id: str) -> Completion:
    payload = body.get("payload")
    error = body.get("error") or body.get("payload_error")
    return Completion(
        request_id=request_id,
        ok=body.get("status") == "OK",
        payload=payload if isinstance(payload, dict) else None,
        error=error if isinstance(error, str) else None,
        received_at=time.time(),
        source="webhook",
    )


def client_webhook_body(completion: Completion) -> bytes:
    """What the caller's server receives: fal's own webhook shape, so code written for fal keeps working."""
    return orjson.dumps(
        {
            "request_id": completion.request_id,
            "gateway_request_id": completion.request_id,
            "status": "OK" if completion.ok else "ERROR",
            "payload": completion.payload,
            "error": completion.error,
        }
    )
