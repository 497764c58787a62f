"""The gate in front of the emulated fal hosts: request log, injected faults, then key check.

A plain ASGI middleware rather than a dependency, because it must see requests that never reach a
route (wrong key, unknown path) and because dropping a connection needs the server's raw `receive`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .runtime import EmulatorRuntime

UPSTREAM_PREFIXES = ("/queue", "/run", "/rest", "/api")  # /api: fal's model API (routes_models.py)
PUBLIC_PATHS = ("/rest/.well-known/jwks.json",)

log = logging.getLogger("falgate.emulator")


def route_path(scope: Scope) -> str:
    """The path below the mount point (scope["path"] keeps the mount prefix in current Starlette)."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root) :] or "/"
    return path


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


class UpstreamGate:
    def __init__(self, app: ASGIApp, runtime: EmulatorRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        upstream = _under(path, UPSTREAM_PREFIXES)
        # Faults also reach the file host so tests can break uploads and video downloads.
        if not upstream and not _under(path, ("/files",)):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        inner_receive = receive
        if upstream:
            body, inner_receive = await _buffer_body(receive)
            query = scope.get("query_string", b"").decode("latin-1")
            self.runtime.control.record_request(method, path, query, scope.get("headers", []), len(body))
        fault = self.runtime.control.take_fault(method, path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                await _drop_connection(receive)
                return
            if fault.status is not None:
                await _send_json(send, fault.status, {"detail": "Injected fault"})
                return
        if upstream and path not in PUBLIC_PATHS and not self._authorized(scope):
            await _send_json(send, 401, {"detail": "Unauthorized"})
            return
        await self.app(scope, inner_receive, send)

    def _authorized(self, scope: Scope) -> bool:
        values = [v for k, v in scope.get("headers", []) if k.lower() == b"authorization"]
        expected = f"Key {self.runtime.config.key}".encode()
        return len(values) == 1 and hmac.compare_digest(values[0], expected)


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole body (to log its size) and hand the app a receive that replays it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _drop_connection(receive: Receive) -> None:
    """Close the TCP connection without a response, as a reset between fal and its caller looks.

    Under uvicorn, `receive` is a bound method of the connection's request cycle, which holds the
    transport. Closing it and then waiting for the disconnect makes uvicorn send nothing at all.
    Where no transport can be found (httpx's in-process ASGITransport, or a wrapping middleware),
    raising an httpx transport error is the closest stand-in: an in-process caller sees exactly the
    exception a dropped connection would give it; a real server would answer 500 instead.
    """
    transport: Any = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise httpx.RemoteProtocolError("Server disconnected without sending a response (injected by the emulator).")
    transport.close()
    try:
        async with asyncio.timeout(2.0):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        log.warning("emulator: injected drop did not observe the disconnect")


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
