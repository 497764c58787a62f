"""Both front doors as one Starlette route, placed first in the app's router.

Its `matches` is a dict lookup or one regex (app/doors/queue.py, and a path comparison for the proxy
route), so a hot request skips FastAPI's route search and dependency solving; but it is an ordinary
route inside the ordinary app, so every middleware and every exception handler sees it exactly as it
sees any other request. A request it does not match (another method, an unknown model or app) goes on
to the routes after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.routing import BaseRoute, Match, NoMatchFound, get_route_path
from starlette.types import Receive, Scope, Send

from app.doors import queue
from app.doors.proxy import proxy_operation
from app.doors.table import PROXY_METHODS, DoorMatch
from app.ops.access import ROUTE_TEMPLATE
from app.pipeline.handler import handle

# Where a match leaves its operation factory and path values (its route template goes where the access
# log reads it).
_FACTORY = "falgate.operation_factory"
_FOUND = "falgate.path_values"
# Clients repeat the same few short query strings (`logs=1`): parsed once each, up to this many kept, so
# a stream of distinct or long ones costs a bounded amount of memory.
_QUERY_CACHE_SIZE = 256
_QUERY_CACHE_MAX_BYTES = 256
_NO_QUERY: Mapping[str, str] = MappingProxyType({})


class FrontDoors(BaseRoute):
    def __init__(self, proxy_path: str, allow_token_minting: bool) -> None:
        self._proxy_path = proxy_path
        self._proxy: DoorMatch = (proxy_path, proxy_operation, (allow_token_minting,))
        self._proxy_methods = frozenset(PROXY_METHODS)
        self._queries: dict[bytes, Mapping[str, str]] = {}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        method = scope["method"]
        path = get_route_path(scope)
        found: DoorMatch | None
        if path == self._proxy_path:
            found = self._proxy if method in self._proxy_methods else None
        else:
            found = queue.match(method, path)
        if found is None:
            return Match.NONE, {}
        template, factory, values = found
        return Match.FULL, {ROUTE_TEMPLATE: template, _FACTORY: factory, _FOUND: values}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        op = scope[_FACTORY](request, self._query(scope["query_string"]), scope[_FOUND])
        response = await handle(scope["app"].state.gateway, op, request)
        await response(scope, receive, send)

    def _query(self, raw: bytes) -> Mapping[str, str]:
        """The parsed query string, read-only: a cached one is shared by every request that sent it."""
        if not raw:
            return _NO_QUERY
        parsed = self._queries.get(raw)
        if parsed is None:
            parsed = MappingProxyType(dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True)))
            if len(raw) <= _QUERY_CACHE_MAX_BYTES:
                if len(self._queries) >= _QUERY_CACHE_SIZE:
                    self._queries.clear()
                self._queries[raw] = parsed
        return parsed

    def url_path_for(self, name: str, /, **path_params: object) -> object:
        raise NoMatchFound(name, path_params)

    def __repr__(self) -> str:
        return f"FrontDoors(proxy_path={self._proxy_path!r})"
