"""Liveness, readiness and metrics: what an orchestrator and a Prometheus scraper ask."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.errors import ServiceUnavailable, Unauthorized
from app.gateway import GatewayDep
from app.ops.metrics import CONTENT_TYPE
from app.store import StoreUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz(gateway: GatewayDep) -> dict:
    return {"status": "ok", "upstream": gateway.settings.upstream}


@router.get("/readyz", summary="Readiness: the store answers")
async def readyz(gateway: GatewayDep) -> dict:
    try:
        await gateway.store.ping()
    except StoreUnavailable:
        raise ServiceUnavailable("The store is unreachable", reason="store") from None
    return {"status": "ready", "store": "ok", "upstream": gateway.settings.upstream}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, gateway: GatewayDep) -> Response:
    token = gateway.settings.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Unauthorized("Metrics need the metrics token", headers={"www-authenticate": 'Bearer realm="metrics"'})
    gateway.metrics.outbox_depth.set(await gateway.store.outbox_depth())
    return Response(gateway.metrics.render(), media_type=CONTENT_TYPE)
