"""The `@fal-ai/client` front door: `proxyUrl` requests carrying `x-fal-target-url`.

The same pipeline as the mirrored paths; this door only classifies the target header
(app/doors/target_url.py). app/doors/route.py serves its GET, POST and PUT; `proxy_router` answers the
other methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response

from app.doors.table import PROXY_METHODS
from app.doors.target_url import parse_target
from app.errors import MethodNotAllowed
from app.pipeline.operations import Operation

TARGET_HEADER = "x-fal-target-url"
TAG = "@fal-ai/client proxy"
_ALLOW = ", ".join(PROXY_METHODS)


def proxy_operation(request: Request, query: Mapping[str, str], found: tuple) -> Operation:
    """The operation a proxy request's `x-fal-target-url` names; `found` is (allow_token_minting,)."""
    (allow_token_minting,) = found
    return parse_target(request.method, request.headers.get(TARGET_HEADER), allow_token_minting)


async def _other_method(request: Request) -> Response:
    raise MethodNotAllowed(f"{request.method} is not supported here", headers={"allow": _ALLOW})


def proxy_router(path: str) -> APIRouter:
    router = APIRouter(tags=[TAG])
    # Explicit, so the catch-all for unknown paths does not answer 404 for the proxy route's other methods.
    router.add_api_route(path, _other_method, methods=["DELETE", "PATCH", "OPTIONS"], include_in_schema=False)
    return router


def openapi_paths(path: str) -> dict[str, dict[str, Any]]:
    target = {
        "name": TARGET_HEADER,
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
        "description": "The fal URL the client means, e.g. https://queue.fal.run/fal-ai/wan-i2v",
    }
    operation = {
        "tags": [TAG],
        "summary": "fal client proxyUrl endpoint",
        "parameters": [target],
        "responses": {"200": {"description": "fal's answer, relayed"}, "4XX": {"description": "Refused, with a JSON `detail`"}},
    }
    return {path: {method.lower(): {**operation, "operationId": f"fal_proxy_{method.lower()}"} for method in PROXY_METHODS}}
