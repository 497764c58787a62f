"""Signed webhook delivery with retries, shaped like fal's."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx

from .config import EmulatorConfig
from .control import ControlState, WebhookAction
from .jobs import COMPLETED, FAILED, OK, Job
from .signing import WebhookSigner


def webhook_body(job: Job) -> dict[str, Any]:
    """fal's payload: the result on success; on failure the error body plus a short `error` line."""
    status_code, result = job.result()
    succeeded = job.outcome == OK
    return {
        "request_id": job.request_id,
        "gateway_request_id": job.request_id,
        "status": "OK" if succeeded else "ERROR",
        "payload": result,
        "error": None if succeeded else f"Invalid status code: {status_code}",
        "payload_error": None,
    }


def early_webhook_body(job: Job) -> dict[str, Any]:
    """The body the job will end with, computed at submit (an EARLY rule): the outcome follows from the input."""
    outcome = FAILED if "[fail]" in str(job.input.get("prompt", "")) else OK
    return webhook_body(dataclasses.replace(job, status=COMPLETED, outcome=outcome))


async def dispatch_webhook(
    client: httpx.AsyncClient, signer: WebhookSigner, config: EmulatorConfig, control: ControlState, job: Job
) -> None:
    """A finished job's webhook, as the control rules say: normally once, or withheld, or duplicated."""
    if not job.webhook_url:
        return
    rule = control.take_webhook_rule(job.request_id, WebhookAction.WITHHOLD, WebhookAction.DUPLICATE)
    if rule is not None and rule.action is WebhookAction.WITHHOLD:
        control.record_webhook(job.webhook_url, job.request_id, 0, None, "withheld")
        return
    for _ in range(rule.copies if rule is not None else 1):
        await deliver_webhook(client, signer, config, control, job)


async def deliver_webhook(
    client: httpx.AsyncClient,
    signer: WebhookSigner,
    config: EmulatorConfig,
    control: ControlState,
    job: Job,
    body_fields: dict[str, Any] | None = None,
) -> bool:
    """POST the signed body; retry non-2xx answers and connection errors. True once one got a 2xx."""
    url = job.webhook_url
    if not url:
        return False
    # Signed bytes must be exactly the bytes sent, so the body is serialised once, here.
    body = json.dumps(body_fields or webhook_body(job), separators=(",", ":")).encode()
    for attempt in range(1, config.webhook_retries + 2):
        if attempt > 1:
            await asyncio.sleep(config.webhook_retry_delay)
        # Signed per attempt: a retry carries a fresh timestamp, as a real redelivery would.
        headers = {"Content-Type": "application/json", **signer.headers(job.request_id, config.user_id, body)}
        try:
            response = await client.post(url, content=body, headers=headers, timeout=config.webhook_timeout)
        except httpx.HTTPError as exc:
            control.record_webhook(url, job.request_id, attempt, None, f"{type(exc).__name__}: {exc}")
            continue
        finally:
            if job.early_webhook_tried is not None:
                job.early_webhook_tried.set()
        control.record_webhook(url, job.request_id, attempt, response.status_code, None)
        if 200 <= response.status_code < 300:
            return True
    return False
