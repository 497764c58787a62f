"""Turning fal's answer into the caller's: status and body unchanged, URLs rewritten, headers filtered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from starlette.responses import Response

from app.fal.upstream import UpstreamResponse
from app.pipeline.operations import FrontDoor, Operation, OpKind

# Besides fal's own x-fal-*, only these come back; hop-by-hop headers, cookies and upstream server
# details stay behind.
_RELAYED_RESPONSE_HEADERS = frozenset({"content-type", "cache-control", "retry-after"})
_URL_FIELDS = ("response_url", "status_url", "cancel_url")
_REWRITTEN_KINDS = frozenset({OpKind.SUBMIT, OpKind.STATUS, OpKind.STREAM})
FAL_QUEUE_BASE = "https://queue.fal.run"


def relay(op: Operation, upstream: UpstreamResponse, gateway_url: str, data: dict | None = None) -> Response:
    """`data`: the body already parsed by the caller, so the hot status path parses it once."""
    content = upstream.content
    if op.kind in _REWRITTEN_KINDS and upstream.status_code < 300:
        content = _rewrite_urls(op, content, gateway_url, data)
    return Response(content, status_code=upstream.status_code, headers=response_headers(upstream))


async def iter_sse_data(upstream: UpstreamResponse) -> AsyncIterator[dict]:
    """The JSON objects of an SSE stream's `data:` events, as they arrive (comments skipped)."""
    pending = b""
    async for chunk in upstream.aiter_raw():
        pending += chunk.replace(b"\r\n", b"\n")
        *events, pending = pending.split(b"\n\n")
        for event in events:
            data = _event_data(event)
            if data is not None:
                yield data


def _event_data(event: bytes) -> dict | None:
    """The JSON object of a one-line `data:` event; None for comments and anything else."""
    lines = event.split(b"\n")
    if len(lines) != 1 or not lines[0].startswith(b"data:"):
        return None
    try:
        data = orjson.loads(lines[0][5:])
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def response_headers(upstream: UpstreamResponse) -> dict[str, str]:
    relayed: dict[str, str] = {}
    for name, value in upstream.headers.items():
        name = name.lower()  # as fal spelled them; HTTP header names are case-insensitive
        if name.startswith("x-fal-") or name in _RELAYED_RESPONSE_HEADERS:
            relayed[name] = value
    return relayed


def request_urls(op: Operation, request_id: str, gateway_url: str) -> dict[str, str]:
    """The per-request URLs a caller of this front door should follow."""
    base = gateway_url if op.door is FrontDoor.REST else FAL_QUEUE_BASE
    root = f"{base}/{op.app_id}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def _rewrite_urls(op: Operation, content: bytes, gateway_url: str, data: dict | None = None) -> bytes:
    # fal's URLs would send the Python client straight to fal (or to our private upstream base).
    if data is None:
        data = json_body(content)
    if data is None or not any(field in data for field in _URL_FIELDS):
        return content
    request_id = data.get("request_id") or op.request_id
    if not isinstance(request_id, str):
        return content
    urls = request_urls(op, request_id, gateway_url)
    return orjson.dumps({**data, **{field: urls[field] for field in _URL_FIELDS if field in data}})


def json_body(content: bytes) -> dict | None:
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
