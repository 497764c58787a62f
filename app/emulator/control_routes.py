"""Test-only control surface under /_control: the request log, fault injection, webhook attempts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .control import Fault, FaultSpec
from .runtime import EmulatorRuntime

router = APIRouter(prefix="/_control", include_in_schema=False)


def _runtime(request: Request) -> EmulatorRuntime:
    return request.app.state.emulator


@router.get("/requests")
async def list_requests(request: Request) -> list[dict[str, Any]]:
    return list(_runtime(request).control.requests)


@router.delete("/requests")
async def clear_requests(request: Request) -> dict[str, Any]:
    _runtime(request).control.requests.clear()
    return {"cleared": True}


@router.get("/faults")
async def list_faults(request: Request) -> list[dict[str, Any]]:
    return [asdict(f) for f in _runtime(request).control.faults if f.times > 0]


@router.post("/faults")
async def add_fault(spec: FaultSpec, request: Request) -> dict[str, Any]:
    fault = Fault(**spec.model_dump())
    _runtime(request).control.faults.append(fault)
    return asdict(fault)


@router.delete("/faults")
async def clear_faults(request: Request) -> dict[str, Any]:
    _runtime(request).control.faults.clear()
    return {"cleared": True}


@router.get("/webhooks")
async def list_webhooks(request: Request) -> list[dict[str, Any]]:
    return list(_runtime(request).control.webhooks)


@router.delete("/webhooks")
async def clear_webhooks(request: Request) -> dict[str, Any]:
    _runtime(request).control.webhooks.clear()
    return {"cleared": True}


@router.get("/jobs/{request_id}")
async def get_job(request_id: str, request: Request) -> Any:
    job = _runtime(request).jobs.get(request_id)
    if job is None:
        return JSONResponse({"detail": "Request not found"}, status_code=404)
    return job.snapshot()
