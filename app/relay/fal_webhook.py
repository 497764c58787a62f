"""`POST /v1/fal/webhook`: fal's completion webhooks, verified, recorded durably, then fanned out.

No caller authentication here (fal is the caller): the Ed25519 signature is the proof. A bad or stale
delivery is refused with 401 and changes nothing; so is one from another fal account (see
`app.relay.fal_account`). A valid one is stored before we answer 200, so an acknowledged webhook is never
lost; a duplicate is acknowledged (and finishes applying the stored completion, if that failed before).
One for a request we have no record of (not submitted here, or its submit answer not recorded yet) is
answered 503: nothing is kept, and fal retries it, by when the submit is recorded.
"""

from __future__ import annotations

import logging

import orjson
from fastapi import APIRouter, Request

from app.errors import BadRequest, ServiceUnavailable, Unauthorized
from app.fal.signatures import WebhookRejected
from app.gateway import GatewayDep
from app.pipeline.handler import read_body
from app.relay.completions import completion_from_webhook

log = logging.getLogger("falgate.webhooks")

router = APIRouter(prefix="/v1/fal", tags=["fal webhooks"])


@router.post("/webhook", summary="Receiver for fal's webhooks (signed by fal)")
async def fal_webhook(request: Request, gateway: GatewayDep) -> dict:
    body = await read_body(request, gateway.settings.max_body_bytes)
    try:
        delivery = await gateway.fal_verifier.verify(request.headers, body)
    except WebhookRejected as rejected:
        log.warning("fal webhook rejected", extra={"fields": {"reason": rejected.reason}})
        gateway.metrics.webhook_verifications.labels(outcome=rejected.reason).inc()
        if rejected.retryable:
            raise ServiceUnavailable("Cannot verify webhooks right now", headers={"retry-after": "30"}) from None
        raise Unauthorized("Invalid webhook signature", reason=rejected.reason) from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or data.get("request_id") not in (None, delivery.request_id):
        gateway.metrics.webhook_verifications.labels(outcome="bad_body").inc()
        raise BadRequest("Webhook body does not match its signed request id")
    if not gateway.fal_account.admits(delivery.user_id):
        gateway.metrics.webhook_verifications.labels(outcome="foreign_account").inc()
        log.warning("fal webhook from another fal account", extra={"fields": {"request_id": delivery.request_id}})
        raise Unauthorized("Webhook from another fal account", reason="foreign_account")
    if await gateway.store.get_request(delivery.request_id) is None:
        gateway.metrics.webhook_verifications.labels(outcome="unknown_request").inc()
        log.info("fal webhook for an unknown request", extra={"fields": {"request_id": delivery.request_id}})
        raise ServiceUnavailable("No such request here (yet)", headers={"retry-after": "5"})
    gateway.fal_account.learn(delivery.user_id)
    completion = completion_from_webhook(data, delivery.request_id)
    fresh = await gateway.completions.record(completion)
    gateway.metrics.webhook_verifications.labels(outcome="accepted" if fresh else "duplicate").inc()
    log.info(
        "fal webhook",
        extra={"fields": {"request_id": delivery.request_id, "status": data.get("status"), "duplicate": not fresh}},
    )
    return {"ok": True, "duplicate": not fresh}
