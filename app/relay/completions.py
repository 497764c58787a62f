"""The one path by which a request becomes finished, whoever noticed first.

fal's webhook, the shared status-stream watcher, the fallback poller and a caller's own result fetch
can all learn that a job ended, on any replica, in any order, and fal may deliver its webhook twice or
before the submit answer was recorded. Every step here is idempotent, so applying a completion again
changes nothing: the first completion stored wins, the record turns terminal once (freeing the slot
and refunding exactly once), the terminal event is appended once, the client webhook is queued once.
Because each step is, a stored completion is applied again whenever it is heard of again (fal's retry
of the same webhook, a poll): a step that failed halfway through last time happens now.

Only what fal said for certain becomes a completion: a verified webhook, a 200 result, or a result
that is fal's own definitive error. A transient answer to our own result fetch (503, a dropped
connection, "still in progress") is retried a few times and then left to the webhook or the poller.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson

from app.callers.ledger import Ledger
from app.errors import GatewayError, UpstreamUnavailable
from app.fal.upstream import UpstreamClient
from app.pipeline.operations import FrontDoor, Operation, OpKind
from app.relay.bus import EventBus
from app.store import Completion, Delivery, DeliveryState, Event, RequestRecord, RequestState, Store

log = logging.getLogger("falgate.completions")

# Deterministic delivery ids make queueing a request's client webhook idempotent across replicas.
_DELIVERY_NAMESPACE = uuid.UUID("6f1d2c1e-8d5e-4a57-9a43-0c5f3e1b7a20")

# Answers to a result fetch that say "not now" rather than "this is how the job ended".
_TRANSIENT_STATUSES = frozenset({400, 404, 408, 409, 425, 429, 502, 503, 504})
_RESULT_ATTEMPTS = 3
_RESULT_BACKOFF_SECONDS = 0.25


class ResultNotReady(UpstreamUnavailable):
    """fal said COMPLETED but our own fetch of the result got only transient answers: try again later."""


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
        """Store a completion durably and apply it; False when one was already stored (a duplicate).

        A duplicate re-applies the stored one: if applying it failed halfway before (a bus or store
        error after the record turned terminal), what was missed happens now.
        """
        if await self._store.put_completion(completion):
            await self.apply(completion)
            return True
        await self.apply(await self._store.get_completion(completion.request_id) or completion)
        return False

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
        elif terminal:
            await self._republish_terminal(request_id)
        return event

    async def _republish_terminal(self, request_id: str) -> None:
        """The terminal event was stored before, but its publish may have failed: publish it again.

        Readers skip a seq they have already seen, so a repeat costs nothing.
        """
        events = await self._store.events_after(request_id, 0)
        terminal = next((e for e in reversed(events) if e.kind in ("completed", "error")), None)
        if terminal is not None:
            await self._bus.publish(request_id, terminal)

    async def from_upstream(self, request_id: str, app_id: str, source: str) -> None:
        """fal says COMPLETED (a poll or the stream) but no webhook has been recorded: fetch the result ourselves."""
        existing = await self._store.get_completion(request_id)
        if existing is not None:
            await self.apply(existing)
            return
        completion = await self._fetch_result(request_id, app_id, source)
        await self.record(completion)

    async def _fetch_result(self, request_id: str, app_id: str, source: str) -> Completion:
        op = Operation(OpKind.RESULT, FrontDoor.REST, app_id, request_id=request_id)
        last = "no answer"
        for attempt in range(_RESULT_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_RESULT_BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                response = await self._upstream.send(op, {})
            except GatewayError as exc:  # connection refused or dropped, timed out
                last = type(exc).__name__
                continue
            if is_definitive_result(response.status_code, response.content):
                return completion_from_result(request_id, response.status_code, response.content, source)
            last = f"fal answered {response.status_code}"
        log.info("result not ready", extra={"fields": {"request_id": request_id, "source": source, "last": last}})
        raise ResultNotReady("The result could not be fetched from fal yet")

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


def is_definitive_result(status_code: int, content: bytes) -> bool:
    """A 200 result, or fal telling us for certain the job failed; not an outage, a limit or "not yet".

    A failure counts when it is fal's validation error (422) or carries fal's own `error_type` (a model
    crash). A bare 5xx is a proxy's or an overloaded front end's, and a 401/403 is about our key, not
    the job: both are left for the webhook or the next poll.
    """
    if status_code in (200, 422):
        return True
    if status_code in _TRANSIENT_STATUSES:
        return False
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error_type"), str)


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
