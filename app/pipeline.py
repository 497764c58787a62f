"""The one request pipeline both front doors share.

authenticate -> check ownership -> rate limit and budget -> validate -> forward with the key -> record.
A front door's only job is to turn its request into an `Operation` and call `handle`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from app.errors import InvalidInput, PayloadTooLarge
from app.operations import SPENDING_KINDS, FrontDoor, Operation, OpKind
from app.state import Gateway
from app.validation import validate_input

# Response headers worth relaying besides fal's own x-fal-*; hop-by-hop headers, cookies and upstream
# server details stay behind.
_RELAYED_RESPONSE_HEADERS = frozenset({"content-type", "cache-control", "retry-after"})
_URL_FIELDS = ("response_url", "status_url", "cancel_url")
_REWRITTEN_KINDS = frozenset({OpKind.SUBMIT, OpKind.STATUS})
_BODY_KINDS = SPENDING_KINDS | {OpKind.UPLOAD_INITIATE, OpKind.TOKEN}
FAL_QUEUE_BASE = "https://queue.fal.run"


async def handle(gateway: Gateway, op: Operation, request: Request) -> Response:
    body = await read_body(request, gateway.settings.max_body_bytes) if op.kind in _BODY_KINDS else None
    if op.kind in SPENDING_KINDS:
        check_input(gateway, op, body or b"")
    if op.kind is OpKind.STREAM:
        return await _relay_stream(gateway, op, request)
    upstream = await gateway.upstream.send(op, request.headers, body)
    return relay(gateway, op, upstream)


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


def check_input(gateway: Gateway, op: Operation, body: bytes) -> None:
    assert op.model is not None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput([{"loc": ["body"], "msg": "Request body is not valid JSON", "type": "json_invalid"}]) from None
    errors = validate_input(op.model, payload, gateway.validation_limits)
    if errors:
        raise InvalidInput(errors)


def relay(gateway: Gateway, op: Operation, upstream: httpx.Response) -> Response:
    content = upstream.content
    if op.kind in _REWRITTEN_KINDS and upstream.status_code < 300:
        content = _rewrite_urls(gateway, op, content)
    return Response(content, status_code=upstream.status_code, headers=_response_headers(upstream))


async def _relay_stream(gateway: Gateway, op: Operation, request: Request) -> Response:
    upstream = await gateway.upstream.send(op, request.headers, stream=True)
    if upstream.status_code != 200:
        await upstream.aread()
        await upstream.aclose()
        return relay(gateway, op, upstream)
    headers = _response_headers(upstream)
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"  # tell nginx-style proxies in front of us not to buffer events
    return StreamingResponse(
        _passthrough(upstream), status_code=200, headers=headers, background=BackgroundTask(upstream.aclose)
    )


async def _passthrough(upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        # fal dropped the stream mid-way; ending ours lets the client reconnect as it would with fal.
        return
    finally:
        await upstream.aclose()


def _response_headers(upstream: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in upstream.headers.items()
        if name.startswith("x-fal-") or name in _RELAYED_RESPONSE_HEADERS
    }


def request_urls(gateway: Gateway, op: Operation, request_id: str) -> dict[str, str]:
    """The per-request URLs a caller of this front door should follow."""
    base = gateway.settings.gateway_url if op.door is FrontDoor.REST else FAL_QUEUE_BASE
    root = f"{base}/{op.app_id}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def _rewrite_urls(gateway: Gateway, op: Operation, content: bytes) -> bytes:
    # fal's URLs would send the Python client straight to fal (or to our private upstream base).
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content
    if not isinstance(data, dict) or not any(field in data for field in _URL_FIELDS):
        return content
    request_id = data.get("request_id") or op.request_id
    if not isinstance(request_id, str):
        return content
    urls = request_urls(gateway, op, request_id)
    for field in _URL_FIELDS:
        if field in data:
            data[field] = urls[field]
    return orjson.dumps(data)
