"""Liveness: answers as long as the process serves HTTP."""

from __future__ import annotations

from fastapi import APIRouter

from app.state import GatewayDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
async def healthz(gateway: GatewayDep) -> dict:
    return {"status": "ok", "upstream": gateway.settings.upstream}
