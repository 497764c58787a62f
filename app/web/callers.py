"""What a caller can see of its own activity: recent requests and today's spend."""

from __future__ import annotations

from fastapi import APIRouter, Query

from app.gateway import GatewayDep, ReadCallerDep

router = APIRouter(prefix="/v1", tags=["callers"])


@router.get("/requests", summary="The caller's own recent requests, newest first")
async def list_requests(caller: ReadCallerDep, gateway: GatewayDep, limit: int = Query(50, ge=1, le=500)) -> dict:
    records = await gateway.store.list_requests(caller.id, limit)
    return {
        "requests": [
            {
                "request_id": r.request_id,
                "model_id": r.model_id,
                "app_id": r.app_id,
                "state": r.state,
                "created_at": r.created_at,
                "estimated_cost": r.cost,
            }
            for r in records
        ]
    }


@router.get("/usage", summary="The caller's spend today and what remains of the daily budget")
async def usage(caller: ReadCallerDep, gateway: GatewayDep) -> dict:
    return await gateway.ledger.usage(caller)
