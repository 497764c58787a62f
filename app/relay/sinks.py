"""Live request events for browsers (SSE) and mobile apps (WebSocket), resumable by sequence number.

Both read the same per-request event stream (`app.relay.readers.watch_events`), and both check that the
caller owns the request: another caller's request is the same 404 as an unknown one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import orjson
from fastapi import APIRouter, Header, Query, Response, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse, ServerSentEvent

from app.callers.authenticator import Caller
from app.errors import GatewayError, TooManyRequests
from app.gateway import Gateway, GatewayDep, ReadCallerDep
from app.pipeline.operations import check_request_id
from app.relay.readers import is_terminal, watch_events
from app.responses import JSONResponse
from app.store import Event

log = logging.getLogger("falgate.sinks")

router = APIRouter(prefix="/v1", tags=["events"])


async def _owned_app(gateway: Gateway, caller: Caller, request_id: str) -> str:
    return await gateway.ledger.owned(caller, check_request_id(request_id))


async def _finished_before(gateway: Gateway, request_id: str, after: int) -> bool:
    if not await gateway.store.has_terminal_event(request_id):
        return False
    return not await gateway.store.events_after(request_id, after, limit=1)


def _resume_point(header: str | None, query: int | None) -> int:
    if header is not None and header.strip().isdigit():
        return int(header.strip())
    return query or 0


@router.get("/requests/{request_id}/events", summary="A request's events as Server-Sent Events")
async def request_events(
    request_id: str,
    caller: ReadCallerDep,
    gateway: GatewayDep,
    last_event_id: str | None = Header(default=None),
    after: int | None = Query(default=None, ge=0, description="Resume after this event id"),
) -> Response:
    app_id = await _owned_app(gateway, caller, request_id)
    resume = _resume_point(last_event_id, after)
    if resume and await _finished_before(gateway, request_id, resume):
        # 204 is how SSE says "nothing more, ever": EventSource stops reconnecting.
        return Response(status_code=204)
    stop = anyio.Event()
    events = _sse(gateway, request_id, app_id, resume, stop)
    return EventSourceResponse(
        events,
        ping=gateway.settings.sse_ping_seconds,
        headers={"x-accel-buffering": "no", "cache-control": "no-cache"},
        shutdown_event=stop,
        shutdown_grace_period=2.0,
    )


async def _sse(
    gateway: Gateway, request_id: str, app_id: str, after: int, stop: anyio.Event
) -> AsyncIterator[ServerSentEvent]:
    gateway.metrics.open_connections.labels(kind="sse").inc()
    try:
        async for event in until_stopped(watch_events(gateway, request_id, app_id, after), stop):
            if event is None:
                yield ServerSentEvent(event="reconnect", data='{"reason":"server shutting down"}', retry=1000)
                return
            yield ServerSentEvent(id=str(event.seq), event=event.kind, data=orjson.dumps(event.data).decode())
            if is_terminal(event):
                return
    finally:
        gateway.metrics.open_connections.labels(kind="sse").dec()


async def until_stopped(source: AsyncIterator[Event], stop: anyio.Event) -> AsyncIterator[Event | None]:
    """Items of `source` until it ends, or one None as soon as `stop` is set (then `source` is closed).

    However it ends (the client went away and the response task was cancelled, included), the pending
    read is cancelled first, so `source` can then be closed: its subscription and keeper go with it.
    """
    stopping = asyncio.ensure_future(stop.wait())
    upcoming: asyncio.Future[Event] | None = None
    try:
        while True:
            upcoming = asyncio.ensure_future(anext(source))
            await asyncio.wait({upcoming, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if upcoming.done():
                try:
                    item = upcoming.result()
                except StopAsyncIteration:
                    return
                upcoming = None
                yield item
                continue
            yield None
            return
    finally:
        stopping.cancel()
        if upcoming is not None and not upcoming.done():
            upcoming.cancel()
            # A cancelled read ends `source` (the CancelledError runs its finally); wait for that.
            with contextlib.suppress(BaseException):
                await upcoming
        with contextlib.suppress(BaseException):
            await source.aclose()  # type: ignore[attr-defined]


# Open sockets per caller id on this replica (FALGATE_WS_MAX_SOCKETS_PER_CALLER).
_open_sockets: Counter[str] = Counter()


@router.websocket("/ws")
async def websocket_events(websocket: WebSocket) -> None:
    """Subscribe to several requests over one socket; see docs in README ("WebSocket protocol")."""
    gateway: Gateway = websocket.app.state.gateway
    try:
        caller = await gateway.auth.authenticate(websocket)
        await gateway.limiter.hit(caller.id, "read")  # a handshake is a read, like an SSE stream's request
        if _open_sockets[caller.id] >= gateway.settings.ws_max_sockets_per_caller:
            raise TooManyRequests("Too many open WebSockets for this caller", headers={"retry-after": "5"})
    except GatewayError as refused:
        # Anyone can be refused: that is an answer, not an incident (info, not error).
        log.info("websocket refused", extra={"fields": {"status": refused.status_code}})
        await websocket.send_denial_response(_denial(refused.status_code, refused.detail, refused.headers))
        return
    _open_sockets[caller.id] += 1
    try:
        await websocket.accept()
        gateway.metrics.open_connections.labels(kind="websocket").inc()
        session = _Session(gateway, caller, websocket)
        try:
            await session.run()
        finally:
            await session.close()
            gateway.metrics.open_connections.labels(kind="websocket").dec()
    finally:
        _open_sockets[caller.id] -= 1
        if _open_sockets[caller.id] <= 0:
            del _open_sockets[caller.id]


class _BinaryFrame(Exception):
    pass


def _denial(status: int, detail: object, headers: dict[str, str] | None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _Session:
    def __init__(self, gateway: Gateway, caller: Caller, websocket: WebSocket) -> None:
        self._gateway = gateway
        self._caller = caller
        self._ws = websocket
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()

    async def run(self) -> None:
        shutdown = asyncio.create_task(self._watch_shutdown())
        try:
            while True:
                try:
                    message = orjson.loads(await self._receive_text())
                except WebSocketDisconnect:
                    return
                except (orjson.JSONDecodeError, _BinaryFrame):
                    await self._send({"type": "error", "detail": "Messages must be JSON objects"})
                    continue
                await self._handle(message if isinstance(message, dict) else {})
        finally:
            shutdown.cancel()

    async def _receive_text(self) -> str:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        text = message.get("text")
        if text is None:
            raise _BinaryFrame  # the protocol is JSON text; a binary frame is answered like bad JSON
        return text

    async def _handle(self, message: dict) -> None:
        kind, request_id = message.get("type"), message.get("request_id")
        if kind == "ping":
            await self._send({"type": "pong"})
        elif kind == "subscribe" and isinstance(request_id, str):
            after = message.get("after", 0)
            await self._subscribe(request_id, after if isinstance(after, int) and after >= 0 else 0)
        elif kind == "unsubscribe" and isinstance(request_id, str):
            task = self._subs.pop(request_id, None)
            if task is not None:
                task.cancel()
            await self._send({"type": "unsubscribed", "request_id": request_id})
        else:
            await self._send({"type": "error", "detail": "Unknown message; expected subscribe, unsubscribe or ping"})

    async def _subscribe(self, request_id: str, after: int) -> None:
        try:
            app_id = await _owned_app(self._gateway, self._caller, request_id)
        except GatewayError as refused:
            await self._send({"type": "error", "request_id": request_id, "status": refused.status_code, "detail": refused.detail})
            return
        if request_id in self._subs:
            self._subs.pop(request_id).cancel()
        elif len(self._subs) >= self._gateway.settings.ws_max_subscriptions:
            detail = "Too many subscriptions on this socket"
            await self._send({"type": "error", "request_id": request_id, "status": 429, "detail": detail})
            return
        self._subs[request_id] = asyncio.create_task(self._forward(request_id, app_id, after))
        await self._send({"type": "subscribed", "request_id": request_id, "after": after})

    async def _forward(self, request_id: str, app_id: str, after: int) -> None:
        async for event in watch_events(self._gateway, request_id, app_id, after):
            await self._send(
                {"type": "event", "request_id": request_id, "id": event.seq, "event": event.kind, "data": event.data}
            )
            if is_terminal(event):
                break
        self._subs.pop(request_id, None)

    async def _watch_shutdown(self) -> None:
        # uvicorn's exit signal, from sse-starlette's one shared watcher per loop (no polling per socket):
        # tell mobile clients to come back elsewhere.
        await EventSourceResponse._listen_for_exit_signal()
        await self._send({"type": "reconnect", "reason": "server shutting down"})
        await self._ws.close(code=1012)  # 1012: service restart

    async def _send(self, message: dict) -> None:
        async with self._send_lock:
            with contextlib.suppress(Exception):
                await self._ws.send_text(orjson.dumps(message).decode())

    async def close(self) -> None:
        for task in self._subs.values():
            task.cancel()
        for task in list(self._subs.values()):
            with contextlib.suppress(BaseException):
                await task
