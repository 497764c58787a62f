"""One structured log line and one metrics sample per request, whatever route answered it.

A pure ASGI middleware, so streaming responses are measured to their end and nothing is buffered. The
pipeline leaves what it learned (operation, model, caller, request id, upstream status) in the request
state; credentials are never among those fields.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.metrics import Metrics
from app.settings import EMULATOR_MOUNT

log = logging.getLogger("falgate.access")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REFUSALS = frozenset({401, 402, 429})
STATE_KEY = "falgate"


def note(state: Any, **fields: object) -> None:
    """Add fields to this request's log line (`request.state`)."""
    current = getattr(state, STATE_KEY, None)
    if current is None:
        current = {}
        setattr(state, STATE_KEY, current)
    current.update(fields)


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The embedded emulator stands in for fal: its traffic is not the gateway's own.
        if scope["type"] != "http" or scope.get("path", "").startswith(EMULATOR_MOUNT):
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        fields: dict[str, object] = dict(scope.get("state", {}).get(STATE_KEY, {}))
        model = str(fields.get("model") or "-")
        self._metrics.requests.labels(route=template, model=model, status=str(status)).inc()
        if status in _REFUSALS:
            self._metrics.refusals.labels(status=str(status)).inc()
        path = scope.get("path", "")
        level = logging.DEBUG if path in _QUIET_PATHS else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "fields": {
                        "method": scope.get("method"),
                        "route": template,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 1),
                        **fields,
                    }
                },
            )
