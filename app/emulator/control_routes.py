"""Test-only control surface under /_control: the request log, fault injection, webhook rules and attempts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .control import Fault, FaultSpec, WebhookRule, WebhookRuleSpec
from .runtime import EmulatorRuntime
from .webhooks import deliver_webhook

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


@router.get("/webhook-rules")
async def list_webhook_rules(request: Request) -> list[dict[str, Any]]:
    return [asdict(r) for r in _runtime(request).control.webhook_rules if r.times > 0]


@router.post("/webhook-rules")
async def add_webhook_rule(spec: WebhookRuleSpec, request: Request) -> dict[str, Any]:
    rule = WebhookRule(**spec.model_dump())
    _runtime(request).control.webhook_rules.append(rule)
    return asdict(rule)


@router.delete("/webhook-rules")
async def clear_webhook_rules(request: Request) -> dict[str, Any]:
    _runtime(request).control.webhook_rules.clear()
    return {"cleared": True}


@router.post("/jobs/{request_id}/webhook")
async def send_webhook_now(request_id: str, request: Request) -> Any:
    """(Re)send a finished job's webhook now, e.g. one withheld earlier: fal's late delivery or retry."""
    runtime = _runtime(request)
    job = runtime.jobs.get(request_id)
    if job is None or not job.webhook_url or job.outcome is None:
        return JSONResponse({"detail": "No finished job with a webhook"}, status_code=404)
    delivered = await deliver_webhook(runtime.client, runtime.signer, runtime.config, runtime.control, job)
    return {"delivered": delivered}


@router.get("/jobs/{request_id}")
async def get_job(request_id: str, request: Request) -> Any:
    job = _runtime(request).jobs.get(request_id)
    if job is None:
        return JSONResponse({"detail": "Request not found"}, status_code=404)
    return job.snapshot()
