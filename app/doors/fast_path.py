"""The front doors' hot requests, dispatched to the pipeline without FastAPI's per-request machinery.

A status poll spent ~40% of the event loop in FastAPI and Starlette (the route search through included
routers, dependency solving, six middleware layers each wrapping `send`), per bench/README.md's profile.
The front doors need none of it: an operation is read from the path, one header and the query, and the
pipeline does the rest. So `FalgateApp` (app/main.py) asks `FastPath.match` first; a match is served here:
the same `Operation` the routes in app/doors/proxy.py and app/doors/queue.py would build, from the same
functions, the same pipeline, the shared error renderers, CORS when it is configured, and the request
observer's metrics sample and log line.

It only takes requests those routes would have answered with a pipeline call; anything else (another
method, an unknown model or app, a path FastAPI would route elsewhere) goes to FastAPI unchanged, so the
routes stay the documented API (/docs) and the answer for everything the fast path declines.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.catalog.models import APP_IDS, CATALOG
from app.doors import queue
from app.doors.proxy import TARGET_HEADER
from app.doors.target_url import parse_target
from app.errors import client_gone, error_response, unexpected_error
from app.ops.access import AccessRecorder
from app.ops.cors import cors
from app.pipeline.handler import handle
from app.pipeline.operations import FrontDoor, Operation, OpKind, per_request_operation, spending_operation
from app.settings import Settings

# The queue paths' per-request tail, as app/doors/queue.py declares them: (method, suffix) -> kind.
_PER_REQUEST = re.compile(r"^/(?P<app>.+)/requests/(?P<request_id>[^/]+)(?P<tail>/status/stream|/status|/cancel)?$")
_PER_REQUEST_KINDS = {
    ("GET", "/status/stream"): OpKind.STREAM,
    ("GET", "/status"): OpKind.STATUS,
    ("PUT", "/cancel"): OpKind.CANCEL,
    ("GET", None): OpKind.RESULT,
}
# The same templates the FastAPI routes carry, so metrics and logs label a request the same either way.
_TEMPLATES = {
    OpKind.STREAM: queue.STREAM_PATH,
    OpKind.STATUS: queue.STATUS_PATH,
    OpKind.CANCEL: queue.CANCEL_PATH,
    OpKind.RESULT: queue.RESULT_PATH,
}
_PROXY_METHODS = frozenset({"GET", "POST", "PUT"})
_FACTORY_KEY = "falgate.operation_factory"


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """What the request observer reads from `scope["route"]`: the route's path template."""

    path: str


OperationFactory = Callable[[Request, dict[str, str]], Operation]


class FastPath:
    def __init__(self, settings: Settings, recorder: AccessRecorder) -> None:
        self._recorder = recorder
        self._proxy_path = settings.proxy_path
        self._proxy_label = RouteLabel(settings.proxy_path)
        self._allow_token_minting = settings.allow_token_minting
        self._submits = {f"/{model_id}": (RouteLabel(f"/{model_id}"), _submit_operation(model_id)) for model_id in CATALOG}
        self._labels = {kind: RouteLabel(path) for kind, path in _TEMPLATES.items()}
        self._serve: ASGIApp = self._answer
        if settings.cors_origins:
            self._serve = cors(self._answer, settings.cors_origins)

    def match(self, scope: Scope) -> tuple[RouteLabel, OperationFactory] | None:
        """The route and operation builder of a front-door request, or None for FastAPI to answer."""
        method = scope["method"]
        path = get_route_path(scope)
        if path == self._proxy_path:
            return (self._proxy_label, self._proxy_operation) if method in _PROXY_METHODS else None
        if method == "POST":
            return self._submits.get(path)
        found = _PER_REQUEST.match(path)
        if found is None:
            return None
        kind = _PER_REQUEST_KINDS.get((method, found["tail"]))
        app_path = found["app"]
        # An unknown app goes on to FastAPI, which answers it (404) or routes it elsewhere.
        if kind is None or not (app_path in APP_IDS or app_path in CATALOG):
            return None
        return self._labels[kind], _per_request_operation(kind, app_path, found["request_id"])

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, matched: tuple[RouteLabel, OperationFactory]
    ) -> None:
        scope["route"], scope[_FACTORY_KEY] = matched
        await self._serve(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        request = Request(scope, receive, send)
        try:
            try:
                raw_query = scope["query_string"]
                query = dict(parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)) if raw_query else {}
                op = scope[_FACTORY_KEY](request, query)
                response = await handle(scope["app"].state.gateway, op, request)
            except HTTPException as refused:
                response = error_response(refused)
            except ClientDisconnect:
                response = client_gone(request)
            except Exception as exc:
                # What Starlette's ServerErrorMiddleware does: a JSON 500, then re-raise for the server's log.
                await (await unexpected_error(request, exc))(scope, receive, send)
                raise
            status = response.status_code
            await response(scope, receive, send)
        finally:
            self._recorder.record(scope, status, time.perf_counter() - started)

    def _proxy_operation(self, request: Request, query: dict[str, str]) -> Operation:
        return parse_target(request.method, request.headers.get(TARGET_HEADER), self._allow_token_minting)


def _submit_operation(model_id: str) -> OperationFactory:
    def factory(request: Request, query: dict[str, str]) -> Operation:
        return spending_operation(OpKind.SUBMIT, FrontDoor.REST, model_id, query.get("fal_webhook"))

    return factory


def _per_request_operation(kind: OpKind, app_path: str, request_id: str) -> OperationFactory:
    def factory(request: Request, query: dict[str, str]) -> Operation:
        return per_request_operation(kind, FrontDoor.REST, app_path, request_id, query.get("logs"))

    return factory
