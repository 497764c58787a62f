"""The one request pipeline both front doors share.

authenticate -> rate limit -> check ownership -> validate -> budget and in-flight slot -> forward with
the key -> record. A front door's only job is to turn its request into an `Operation` and call `handle`.
"""

from __future__ import annotations

import dataclasses
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.callers import idempotency
from app.callers.authenticator import Caller
from app.callers.ledger import Admission
from app.callers.ratelimit import operation_class
from app.catalog.validation import parse_body, validate_input
from app.errors import BadRequest, GatewayError, InvalidInput, PayloadTooLarge
from app.fal import tags as tag_rules
from app.fal.storage import initiate_body
from app.fal.upstream import UpstreamResponse
from app.gateway import Gateway
from app.ops.access import note
from app.pipeline.local_answers import local_answer
from app.pipeline.operations import PER_REQUEST_KINDS, SPENDING_KINDS, Operation, OpKind
from app.pipeline.rewrite import json_body, relay
from app.relay.client_webhooks import TargetRefused, validate_target_url
from app.relay.completions import completion_from_result
from app.relay.readers import fal_status_stream
from app.store import RequestState

_BODY_KINDS = SPENDING_KINDS | {OpKind.UPLOAD_INITIATE, OpKind.TOKEN}

log = logging.getLogger("falgate.pipeline")


async def handle(gateway: Gateway, op: Operation, request: Request) -> Response:
    note(request.scope, operation=op.kind.value, door=op.door.value, model=_model_label(op), request_id=op.request_id)
    caller = await gateway.auth.authenticate(request)
    note(request.scope, caller_id=caller.id)
    # A dry run is a read: it sends nothing and holds nothing, like POST /v1/quote.
    verdict = await gateway.limiter.hit(caller.id, "read" if op.dry_run else operation_class(op.kind))
    if op.kind in PER_REQUEST_KINDS:
        assert op.request_id is not None
        await gateway.ledger.owned(caller, op.request_id, op.app_id)
    body = await read_body(request, gateway.settings.max_body_bytes) if op.kind in _BODY_KINDS else None
    if op.kind in SPENDING_KINDS:
        response = await _spend(gateway, caller, op, request, body or b"")
    elif op.kind is OpKind.STREAM:
        response = await _stream(gateway, op, request)
    else:
        if op.kind is OpKind.UPLOAD_INITIATE:
            body = initiate_body(op, body or b"")
        response = await _forward(gateway, op, request, body)
    # Appended raw: the answer never carries these already, and MutableHeaders would re-scan per header.
    response.raw_headers.extend((name.encode(), value.encode()) for name, value in verdict.headers().items())
    return response


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is larger than {limit} bytes", limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _model_label(op: Operation) -> str:
    # Bounded for metrics: a catalog slug, or the app id of a per-request path (also from the catalog).
    return op.model.slug if op.model else op.app_id or "-"


def parse_input(gateway: Gateway, op: Operation, body: bytes) -> tuple[dict, bytes]:
    """The validated payload, and the bytes to forward: its own serialisation, never the raw body."""
    assert op.model is not None
    parsed = parse_body(body)
    errors = validate_input(op.model, parsed.payload, gateway.validation_limits)
    if errors:
        gateway.metrics.validation_rejections.labels(model=op.model.slug).inc()
        raise InvalidInput(errors)
    assert isinstance(parsed.payload, dict)  # validate_input refuses anything else
    return parsed.payload, parsed.forward


async def _spend(gateway: Gateway, caller: Caller, op: Operation, request: Request, body: bytes) -> Response:
    """Submit or sync run: validated, idempotent, paid for, and recorded against the caller."""
    payload, body = parse_input(gateway, op, body)
    client_webhook = _client_webhook(gateway, op)
    tags = _fal_tags(caller, request)
    if op.dry_run:  # checked exactly like a submit up to here; answered with what admit would reserve
        return JSONResponse(await gateway.ledger.quote(caller, op, payload))
    # ?push=0 / ?push_device=ID (app/relay/push/), stored with the request when it is recorded.
    push_choice = await gateway.push.choice_for(caller.id, request.query_params) if op.kind is OpKind.SUBMIT else None
    if op.kind is OpKind.SUBMIT:
        # fal always calls our own receiver; the caller's webhook is ours to deliver once we verified fal's.
        op = dataclasses.replace(op, params={**op.params, "fal_webhook": gateway.settings.fal_webhook_url})
    key = idempotency.key_from(request.headers) if op.kind is OpKind.SUBMIT else None
    if key is not None:
        replay = await gateway.idempotency.begin(caller.id, key, op, payload)
        if replay is not None:
            return replay
    try:
        admission = await gateway.ledger.admit(caller, op, payload)
    except BaseException:
        if key is not None:
            await gateway.idempotency.abort(caller.id, key)
        raise
    # From here fal may get the bytes: fal's answer is awaited and recorded even if this request is
    # cancelled (a shutdown's grace ran out, the client left). The call settles its own admission and
    # idempotency key, so a retry with the same key replays the answer rather than submitting again.
    call = _send_and_record(gateway, caller, op, request, body, admission, client_webhook, key, push_choice, tags)
    return await gateway.shielded.run(call)


async def _send_and_record(
    gateway: Gateway,
    caller: Caller,
    op: Operation,
    request: Request,
    body: bytes,
    admission: Admission,
    client_webhook: str,
    key: str | None,
    push_choice: str | None,
    tags: str,
) -> Response:
    try:
        response = await _send_and_settle(gateway, op, request, body, admission, client_webhook, push_choice, tags)
    except BaseException:
        if key is not None:
            await gateway.idempotency.abort(caller.id, key)
        raise
    if key is not None:
        if response.status_code < 300:
            await gateway.idempotency.complete(caller.id, key, response)
        else:
            await gateway.idempotency.abort(caller.id, key)
    return response


async def _send_and_settle(
    gateway: Gateway,
    op: Operation,
    request: Request,
    body: bytes,
    admission: Admission,
    client_webhook: str,
    push_choice: str | None,
    tags: str,
) -> Response:
    try:
        upstream = await gateway.upstream.send(op, request.headers, body, tags=tags)
    except BaseException:
        await gateway.ledger.abandon(admission)  # no answer from fal: nothing of ours to record
        raise
    note(request.scope, upstream_status=upstream.status_code, request_id=upstream.headers.get("x-fal-request-id"))
    # fal's answer is parsed once, for the URL rewrite and for the request id the ledger records.
    data = json_body(upstream.content) if op.kind is OpKind.SUBMIT and upstream.status_code < 300 else None
    try:
        response = relay(op, upstream, gateway.settings.gateway_url, data)
    except BaseException:
        await gateway.ledger.abandon(admission)
        raise
    await _settle(gateway, op, admission, upstream.status_code, data, client_webhook, push_choice)
    return response


def _fal_tags(caller: Caller, request: Request) -> str:
    """The X-Fal-Tags to send: the caller's id, plus the caller's own tags when they keep fal's rules."""
    try:
        return tag_rules.for_caller(caller.id, request.headers.get(tag_rules.HEADER))
    except tag_rules.InvalidTags as refused:
        raise InvalidInput(
            [{"loc": ["header", tag_rules.HEADER], "msg": f"Invalid X-Fal-Tags: {refused}", "type": "value_error"}]
        ) from None


def _client_webhook(gateway: Gateway, op: Operation) -> str:
    url = op.params.get("fal_webhook", "")
    if not url:
        return ""
    if op.kind is not OpKind.SUBMIT:
        raise BadRequest("fal_webhook is only supported on queue submits")
    if gateway.settings.webhook_secret is None:
        raise BadRequest("Client webhooks are not enabled on this gateway (FALGATE_WEBHOOK_SECRET is unset)")
    try:
        return validate_target_url(url, allow_private=gateway.settings.webhook_allow_private)
    except TargetRefused as refused:
        raise InvalidInput(
            [{"loc": ["query", "fal_webhook"], "msg": f"Webhook URL refused: {refused.reason}", "type": "webhook_url"}]
        ) from None


async def _settle(
    gateway: Gateway,
    op: Operation,
    admission: Admission,
    status: int,
    data: dict | None,
    client_webhook: str,
    push_choice: str | None = None,
) -> None:
    ledger = gateway.ledger
    if op.kind is OpKind.RUN:
        # A sync run is over when fal answers: its slot is free, its cost spent unless it failed.
        await ledger.abandon(admission, refund=status >= 300)
        return
    request_id = data.get("request_id") if data else None
    if not isinstance(request_id, str):
        await ledger.abandon(admission)
        return
    try:
        if push_choice is not None:  # before the record: a completion applied from then on reads it
            await gateway.store.set_push_choice(request_id, push_choice)
        early = await ledger.commit(admission, op, request_id, client_webhook)
    except BaseException:
        # Not recorded (as far as we can know): the admission is still ours to give back.
        await ledger.abandon(admission)
        raise
    # From here the stored record owns the slot and the budget: whatever fails now, finishing the
    # request frees them, so nothing here may abandon the admission (a second refund).
    if early is not None:  # fal's webhook arrived before we had recorded the request
        try:
            await gateway.completions.apply(early)
        except Exception:
            # fal took the job and it is recorded: the caller gets its request id whatever went wrong here
            # (a 500 would invite a retry that submits the job twice). The completion is stored, and the
            # poller finds the request still open and finishes it.
            log.warning(
                "applying an early completion failed", exc_info=True, extra={"fields": {"request_id": request_id}}
            )


async def _forward(gateway: Gateway, op: Operation, request: Request, body: bytes | None) -> Response:
    # Here the caller is authenticated, limited and checked as the owner: what the store knows may be shown.
    local = await local_answer(gateway, op)
    if local is not None:
        note(request.scope, answered_from="store")  # no upstream_status: fal was not asked
        return local
    if op.kind is OpKind.STATUS:
        upstream, status = await _shared_status(gateway, op, request)
    else:
        upstream, status = await _call_and_observe(gateway, op, request, body)
    note(request.scope, upstream_status=upstream.status_code)
    return relay(op, upstream, gateway.settings.gateway_url, status)


async def _shared_status(gateway: Gateway, op: Operation, request: Request) -> tuple[UpstreamResponse, dict | None]:
    """One upstream status call for every concurrent poll of the request, reused for FALGATE_STATUS_MAX_AGE_MS."""
    key = (op.request_id, op.app_id, op.params.get("logs"))
    return await gateway.status_flights.share(
        key,
        gateway.settings.status_max_age_ms / 1000,
        lambda: _call_and_observe(gateway, op, request, None),
        reusable=lambda answer: answer[0].status_code < 300,
    )


async def _call_and_observe(
    gateway: Gateway, op: Operation, request: Request, body: bytes | None
) -> tuple[UpstreamResponse, dict | None]:
    upstream = await gateway.upstream.send(op, request.headers, body)
    # A status body is parsed once, for the URL rewrite and for what it tells the ledger.
    status = json_body(upstream.content) if op.kind is OpKind.STATUS and upstream.status_code < 300 else None
    if op.request_id is not None:
        await _observe(gateway, op, upstream.status_code, upstream.content, status)
    return upstream, status


async def _observe(gateway: Gateway, op: Operation, code: int, content: bytes, status: dict | None) -> None:
    """What a caller's own poll tells us about the request, so slots and budgets follow without a webhook."""
    request_id = op.request_id
    assert request_id is not None
    if status is not None:
        state = status.get("status")
        await _keep_logs(gateway, request_id, status.get("logs"))
        if state == RequestState.COMPLETED:
            try:
                await gateway.completions.from_upstream(request_id, op.app_id, source="poll")
            except GatewayError:
                # fal's answer still reaches the caller; the slot frees now, the webhook or poller does the rest.
                log.info("result fetch after COMPLETED failed", extra={"fields": {"request_id": request_id}})
                finished = RequestState.FAILED if status.get("error") else RequestState.COMPLETED
                await gateway.ledger.finish(request_id, finished)
        elif isinstance(state, str):
            await gateway.ledger.progress(request_id, state)
    elif op.kind is OpKind.RESULT and code == 200:
        await gateway.completions.record(completion_from_result(request_id, code, content, "poll"))
    elif op.kind is OpKind.CANCEL and code == 202:
        await gateway.ledger.finish(request_id, RequestState.CANCELLED)


async def _keep_logs(gateway: Gateway, request_id: str, logs: object) -> None:
    """A poll that asked for logs: the lines the event log lacks, so polls answered from the store once
    the request finished show them too (only until the completion's terminal event closes the log)."""
    if not isinstance(logs, list) or not logs:
        return
    seen = sum(len(e.data.get("logs") or []) for e in await gateway.store.events_after(request_id, 0) if e.kind == "logs")
    if len(logs) > seen:
        await gateway.completions.publish(request_id, "logs", {"logs": logs[seen:]})


async def _stream(gateway: Gateway, op: Operation, request: Request) -> Response:
    """fal's status stream format, served from the shared watcher rather than one upstream stream each."""
    return fal_status_stream(gateway, op, with_logs=op.params.get("logs") == "1")
