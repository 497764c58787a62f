"""The one route table of fal's queue API: which (method, path) is which operation.

The mirrored queue paths (app/doors/queue.py), the proxy route's `x-fal-target-url` classification
(app/doors/target_url.py) and the API docs all read it, so a path the gateway serves on one door is the
same operation on the other, and nobody keeps a copy of the table that could drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from app.pipeline.operations import Operation, OpKind

SUBMIT_METHOD = "POST"
PROXY_METHODS = ("GET", "POST", "PUT")

# What a front door makes of a matched request: the operation, from the request, its parsed query and
# what matching the path found (a tuple, so a match allocates no closure per request).
OperationFactory = Callable[[Request, Mapping[str, str], tuple], Operation]
# A matched front-door request: its route template (for metrics and logs), factory and path values.
DoorMatch = tuple[str, OperationFactory, tuple]


@dataclass(frozen=True, slots=True)
class PerRequestRoute:
    """One of fal's `/{app}/requests/{id}...` operations."""

    kind: OpKind
    method: str
    tail: tuple[str, ...]  # the path segments after the request id
    summary: str
    # The path template, as metrics and logs label requests (Starlette's syntax; /docs drops `:path`).
    template: str = field(init=False)

    def __post_init__(self) -> None:
        tail = "".join(f"/{segment}" for segment in self.tail)
        object.__setattr__(self, "template", "/{app_path:path}/requests/{request_id}" + tail)


PER_REQUEST_ROUTES: tuple[PerRequestRoute, ...] = (
    PerRequestRoute(OpKind.STREAM, "GET", ("status", "stream"), "Stream a request's status (SSE)"),
    PerRequestRoute(OpKind.STATUS, "GET", ("status",), "A request's status"),
    PerRequestRoute(OpKind.CANCEL, "PUT", ("cancel",), "Cancel a request"),
    PerRequestRoute(OpKind.RESULT, "GET", (), "A request's result"),
)

_BY_METHOD_AND_TAIL = {(route.method, route.tail): route for route in PER_REQUEST_ROUTES}


def per_request_route(method: str, tail: tuple[str, ...]) -> PerRequestRoute | None:
    return _BY_METHOD_AND_TAIL.get((method, tail))


def tail_pattern() -> str:
    """A regex alternation of every tail (longest first), for matching a whole path in one step."""
    tails = sorted({"".join(f"/{s}" for s in route.tail) for route in PER_REQUEST_ROUTES if route.tail}, key=len)
    return "|".join(reversed(tails))
