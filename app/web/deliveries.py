"""A caller's client-webhook deliveries: what was sent where, every attempt, and re-sending one."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query

from app.errors import NotFound
from app.gateway import GatewayDep, ReadCallerDep, SubmitCallerDep
from app.store import Delivery, DeliveryState

router = APIRouter(prefix="/v1/webhooks", tags=["client webhooks"])


def _view(delivery: Delivery) -> dict:
    return {
        "delivery_id": delivery.delivery_id,
        "request_id": delivery.request_id,
        "url": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at if delivery.state == DeliveryState.PENDING else None,
        "created_at": delivery.created_at,
        "delivered_at": delivery.delivered_at,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error,
        "history": list(delivery.history),
    }


@router.get("/deliveries", summary="The caller's client-webhook deliveries, newest first")
async def list_deliveries(caller: ReadCallerDep, gateway: GatewayDep, limit: int = Query(50, ge=1, le=500)) -> dict:
    return {"deliveries": [_view(d) for d in await gateway.store.list_deliveries(caller.id, limit)]}


@router.post("/deliveries/{delivery_id}/redeliver", summary="Send a delivery again now")
async def redeliver(delivery_id: str, caller: SubmitCallerDep, gateway: GatewayDep) -> dict:
    delivery = await gateway.store.get_delivery(delivery_id)
    if delivery is None or delivery.caller_id != caller.id:
        raise NotFound("Delivery not found")
    updated = await gateway.store.redeliver(delivery_id, time.time())
    if updated is None:  # expired or pruned between the read and the re-send
        raise NotFound("Delivery not found")
    gateway.outbox.wake()
    return _view(updated)
