"""`POST /v1/quote/{model_id}`: what a submit of this body would cost, without sending it to fal.

The body goes through the pipeline's own `parse_input` (the same 422s as a submit, built-in and
configured models alike) and is priced by the ledger's `quote`, which uses the figure `admit` reserves.
Nothing is held: a quote is a read, counted against the caller's read limit.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.gateway import GatewayDep, ReadCallerDep
from app.pipeline.handler import parse_input, read_body
from app.pipeline.operations import FrontDoor, OpKind, spending_operation

router = APIRouter(prefix="/v1", tags=["billing"])


@router.post(
    "/quote/{model_id:path}",
    summary="The cost of a submit of this body, and the caller's remaining daily budget",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def quote(model_id: str, request: Request, caller: ReadCallerDep, gateway: GatewayDep) -> dict:
    op = spending_operation(OpKind.SUBMIT, FrontDoor.REST, model_id)  # 404 with the supported list if unknown
    body = await read_body(request, gateway.settings.max_body_bytes)
    payload, _ = parse_input(gateway, op, body)
    return await gateway.ledger.quote(caller, op, payload)
