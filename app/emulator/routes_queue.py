"""fal's queue host (under /queue) and its synchronous run host (under /run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .jobs import COMPLETED, Job, app_id_of
from .web import fal_json, not_found, public_base, read_json_object, runtime_of

router = APIRouter(include_in_schema=False)

REQUEST = "/queue/{app_id:path}/requests/{request_id}"


def _wants_logs(request: Request) -> bool:
    return request.query_params.get("logs", "0").strip().lower() in ("1", "true", "yes")


def _find(request: Request, app_id: str, request_id: str) -> Job | None:
    return runtime_of(request).jobs.find(app_id, request_id)


_TAG_KEY = re.compile(r"[a-z0-9._-]+")


def _tags_refusal(raw: str | None) -> Response | None:
    """fal's documented X-Fal-Tags rules, written out on their own (not the gateway's code checking itself)."""
    if raw is None:
        return None
    pairs = [item.strip().partition("=") for item in raw.split(",")]
    broken = (
        len(raw.encode()) > 1024
        or len(pairs) > 10
        or any(not sep or not key or not _TAG_KEY.fullmatch(key) or key.startswith("fal.") for key, sep, _ in pairs)
    )
    if not broken:
        return None
    detail = [{"loc": ["header", "x-fal-tags"], "msg": "Invalid X-Fal-Tags", "type": "value_error"}]
    return JSONResponse({"detail": detail}, status_code=422)


async def _submit(request: Request, model_id: str, webhook_url: str | None) -> Job | Response:
    app_id = app_id_of(model_id)
    if app_id is None:
        return JSONResponse({"detail": "Application not found"}, status_code=404)
    refused = _tags_refusal(request.headers.get("x-fal-tags"))
    if refused is not None:
        return refused
    body = await read_json_object(request)
    if isinstance(body, Response):
        return body
    runtime = runtime_of(request)
    return runtime.submit(model_id.strip("/"), app_id, body, public_base(request), webhook_url)


# Declaration order matters: the result pattern (ending in `{request_id}`) also matches `.../status`
# with request id "status", so the longer per-request routes are declared before it.


@router.get(REQUEST + "/status/stream")
async def status_stream(app_id: str, request_id: str, request: Request) -> Response:
    job = _find(request, app_id, request_id)
    if job is None:
        return not_found()
    keepalive = runtime_of(request).config.keepalive_seconds
    events = _status_events(job, _wants_logs(request), keepalive)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "x-fal-request-id": job.request_id}
    return StreamingResponse(events, media_type="text/event-stream", headers=headers)


async def _status_events(job: Job, with_logs: bool, keepalive: float) -> AsyncIterator[str]:
    last = None
    while True:
        version = job.version
        text = json.dumps(job.status_body(with_logs))
        # Only real changes are events: without logs, a new log line changes nothing the caller sees.
        if text != last:
            yield f"data: {text}\n\n"
            last = text
        if job.status == COMPLETED:
            return
        if not await job.wait_change(version, keepalive):
            yield ": ping\n\n"


@router.get(REQUEST + "/status")
async def status(app_id: str, request_id: str, request: Request) -> Response:
    job = _find(request, app_id, request_id)
    if job is None:
        return not_found()
    code = 200 if job.status == COMPLETED else 202
    return JSONResponse(job.status_body(_wants_logs(request)), status_code=code, headers={"x-fal-request-id": job.request_id})


@router.put(REQUEST + "/cancel")
async def cancel(app_id: str, request_id: str, request: Request) -> Response:
    job = _find(request, app_id, request_id)
    if job is None:
        return not_found()
    headers = {"x-fal-request-id": job.request_id}
    if not job.request_cancel():
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400, headers=headers)
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=headers)


@router.get(REQUEST)
async def result(app_id: str, request_id: str, request: Request) -> Response:
    job = _find(request, app_id, request_id)
    if job is None:
        return not_found()
    code, body = job.result()
    return fal_json(code, body, job.request_id)


@router.post("/queue/{model_id:path}")
async def submit(model_id: str, request: Request) -> Response:
    job = await _submit(request, model_id, request.query_params.get("fal_webhook") or None)
    if isinstance(job, Response):
        return job
    if job.early_webhook_tried is not None:  # an EARLY rule: the webhook's first attempt comes first
        with contextlib.suppress(TimeoutError):  # bounded: one attempt never takes longer than its timeout
            await asyncio.wait_for(job.early_webhook_tried.wait(), runtime_of(request).config.webhook_timeout + 1)
    return JSONResponse(job.submit_body(), headers={"x-fal-request-id": job.request_id})


@router.post("/run/{model_id:path}")
async def run(model_id: str, request: Request) -> Response:
    """fal.run: the same job, waited for in the request; webhooks are a queue-only feature."""
    job = await _submit(request, model_id, None)
    if isinstance(job, Response):
        return job
    await job.wait_finished()
    code, body = job.result()
    return fal_json(code, body, job.request_id)
