"""`GET /v1/models`: what this gateway serves, with each model's input schema and billing rule."""

from __future__ import annotations

from fastapi import APIRouter

from app.catalog.models import catalog_entry
from app.catalog.registry import MODELS
from app.gateway import GatewayDep, ReadCallerDep

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models", summary="The models this gateway serves")
async def list_models(caller: ReadCallerDep, gateway: GatewayDep) -> dict:
    return {"models": [catalog_entry(spec, gateway.prices) for spec in MODELS.values()]}
