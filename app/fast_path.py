"""The front doors' hot requests, dispatched to the pipeline without FastAPI's per-request machinery.

A status poll spent ~40% of the event loop in FastAPI and Starlette (the route search through included
routers, dependency solving, exception wrappers), per bench/README.md's profile. The front doors need none
of it: an operation is read from the path, one header and the query, and the pipeline does the rest. So
this ASGI middleware recognises those requests with a dict lookup or one regex and builds the same
`Operation` the routes in app/routes/proxy.py and app/routes/queue.py would, from the same functions.

It only takes requests those routes would have answered with a pipeline call; anything else (another
method, an unknown model or app, a path FastAPI would route elsewhere) goes on to FastAPI unchanged, so
the routes stay the documented API (/docs) and the answer for everything the fast path declines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.catalog import APP_IDS, CATALOG
from app.errors import error_response
from app.operations import FrontDoor, Operation, OpKind, per_request_operation, spending_operation
from app.pipeline import handle
from app.settings import Settings
from app.target_url import parse_target

TARGET_HEADER = "x-fal-target-url"

# The queue paths' per-request tail, as app/routes/queue.py declares them: (method, suffix) -> kind.
_PER_REQUEST = re.compile(r"^/(?P<app>.+)/requests/(?P<request_id>[^/]+)(?P<tail>/status/stream|/status|/cancel)?$")
_PER_REQUEST_KINDS = {
    ("GET", "/status/stream"): OpKind.STREAM,
    ("GET", "/status"): OpKind.STATUS,
    ("PUT", "/cancel"): OpKind.CANCEL,
    ("GET", None): OpKind.RESULT,
}
# The same templates the FastAPI routes carry, so metrics and logs label a request the same either way.
_TEMPLATES = {
    OpKind.STREAM: "/{app_path:path}/requests/{request_id}/status/stream",
    OpKind.STATUS: "/{app_path:path}/requests/{request_id}/status",
    OpKind.CANCEL: "/{app_path:path}/requests/{request_id}/cancel",
    OpKind.RESULT: "/{app_path:path}/requests/{request_id}",
}
_PROXY_METHODS = frozenset({"GET", "POST", "PUT"})


@dataclass(frozen=True, slots=True)
class RouteLabel:
    """What the request observer reads from `scope["route"]`: the route's path template."""

    path: str


OperationFactory = Callable[[Request, dict[str, str]], Operation]


class FastPath:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self._app = app
        self._proxy_path = settings.proxy_path
        self._proxy_label = RouteLabel(settings.proxy_path)
        self._allow_token_minting = settings.allow_token_minting
        self._submits = {f"/{model_id}": (RouteLabel(f"/{model_id}"), _submit_operation(model_id)) for model_id in CATALOG}
        self._labels = {kind: RouteLabel(path) for kind, path in _TEMPLATES.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        matched = self._match(scope)
        if matched is None:
            await self._app(scope, receive, send)
            return
        label, factory = matched
        scope["route"] = label
        request = Request(scope, receive, send)
        try:
            query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
            op = factory(request, query)
            response = await handle(scope["app"].state.gateway, op, request)
        except HTTPException as refused:
            response = error_response(refused)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> tuple[RouteLabel, OperationFactory] | None:
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
