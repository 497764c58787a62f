"""The `@fal-ai/client` front door: `proxyUrl` requests carrying `x-fal-target-url`.

The same pipeline as the mirrored paths; this module only classifies the target header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.doors.target_url import parse_target
from app.errors import MethodNotAllowed
from app.gateway import GatewayDep
from app.pipeline.handler import handle

TARGET_HEADER = "x-fal-target-url"


async def fal_proxy(request: Request, gateway: GatewayDep) -> Response:
    op = parse_target(request.method, request.headers.get(TARGET_HEADER), gateway.settings.allow_token_minting)
    return await handle(gateway, op, request)


async def _other_method(request: Request) -> Response:
    raise MethodNotAllowed(f"{request.method} is not supported here", headers={"allow": "GET, POST, PUT"})


def proxy_router(path: str) -> APIRouter:
    router = APIRouter(tags=["@fal-ai/client proxy"])
    router.add_api_route(path, fal_proxy, methods=["GET", "POST", "PUT"], summary="fal client proxyUrl endpoint")
    # Explicit, so the catch-all for unknown paths does not answer 404 for the proxy route's other methods.
    router.add_api_route(path, _other_method, methods=["DELETE", "PATCH", "OPTIONS"], include_in_schema=False)
    return router
