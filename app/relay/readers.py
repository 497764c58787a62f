"""Every sink reads a request's events the same way, and the mirrored status stream speaks fal's format.

`watch_events` is the one reader: the store's history after a sequence number, then live events from
the bus, with the shared upstream watcher kept alive meanwhile (re-asked periodically, so if the
replica that watched fal dies, another takes over). SSE, WebSocket and fal's own
`.../status/stream` are all views of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from app.gateway import Gateway
from app.pipeline.operations import Operation
from app.pipeline.rewrite import request_urls
from app.relay.bus import TERMINAL_EVENT_KINDS, follow
from app.store import Event

_REENSURE_SECONDS = 10.0


async def watch_events(gateway: Gateway, request_id: str, app_id: str, after: int = 0) -> AsyncIterator[Event]:
    keeper = asyncio.create_task(_keep_watched(gateway, request_id, app_id))
    try:
        async for event in follow(gateway.store, gateway.bus, request_id, after):
            yield event
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def _keep_watched(gateway: Gateway, request_id: str, app_id: str) -> None:
    while True:
        gateway.watchers.ensure(request_id, app_id)
        await asyncio.sleep(_REENSURE_SECONDS)


def is_terminal(event: Event) -> bool:
    return event.kind in TERMINAL_EVENT_KINDS


def fal_status_stream(gateway: Gateway, op: Operation, with_logs: bool) -> EventSourceResponse:
    """`GET .../status/stream` as fal serves it: `data: {status object}` per change, closed after COMPLETED."""
    assert op.request_id is not None
    return EventSourceResponse(
        _fal_statuses(gateway, op, with_logs),
        ping=gateway.settings.sse_ping_seconds,
        sep="\n",
        headers={"x-accel-buffering": "no", "cache-control": "no-cache"},
    )


async def _fal_statuses(gateway: Gateway, op: Operation, with_logs: bool) -> AsyncIterator[ServerSentEvent]:
    request_id = op.request_id
    assert request_id is not None
    urls = request_urls(op, request_id, gateway.settings.gateway_url)
    logs: list[dict] = []
    state: dict = {"status": "IN_QUEUE", "request_id": request_id, "queue_position": 0}
    gateway.metrics.open_connections.labels(kind="status_stream").inc()
    try:
        async for event in watch_events(gateway, request_id, op.app_id):
            if event.kind == "status":
                state = {"request_id": request_id, **event.data}
            elif event.kind == "logs":
                logs.extend(event.data.get("logs", []))
                state = {"status": "IN_PROGRESS", "request_id": request_id}
            else:
                state = {"status": "COMPLETED", "request_id": request_id}
                if event.kind == "error":
                    state["error"] = event.data.get("error") or "Request failed"
            # fal's clients expect queue_position while queued and a logs key otherwise.
            if state["status"] != "IN_QUEUE":
                state.pop("queue_position", None)
                state["logs"] = list(logs) if with_logs else None
            yield ServerSentEvent(data=orjson.dumps({**state, **urls}).decode())
            if is_terminal(event):
                return
    finally:
        gateway.metrics.open_connections.labels(kind="status_stream").dec()
