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

from app.ops.metrics import Metrics
from app.settings import EMULATOR_MOUNT

# Set by the front doors' route (app/doors/route.py), which serves many templates as one route.
ROUTE_TEMPLATE = "falgate.route_template"

log = logging.getLogger("falgate.access")

_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REFUSALS = frozenset({401, 402, 429})
STATE_KEY = "falgate"


def note(scope: Scope, **fields: object) -> None:
    """Add fields to this request's log line (kept in the ASGI scope's state, as `request.state` is)."""
    state = scope.setdefault("state", {})
    current = state.get(STATE_KEY)
    if current is None:
        state[STATE_KEY] = current = {}
    current.update(fields)


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics
        self._request_counters: dict[tuple[str, str, int], Any] = {}

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
        template = scope.get(ROUTE_TEMPLATE) or getattr(scope.get("route"), "path", None) or "unmatched"
        fields: dict[str, object] = dict(scope.get("state", {}).get(STATE_KEY, {}))
        model = str(fields.get("model") or "-")
        self._count(template, model, status)
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

    def _count(self, template: str, model: str, status: int) -> None:
        # Label sets are bounded (routes x models x status codes): keep each child counter, since
        # prometheus_client's labels() takes a lock and validates on every call.
        key = (template, model, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self._metrics.requests.labels(
                route=template, model=model, status=str(status)
            )
        counter.inc()
