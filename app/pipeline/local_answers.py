"""Answers to a finished request's status poll and result fetch, built from the store with no call to fal.

Called only after the caller was authenticated, rate limited and checked as the request's owner: the
store is per request, so whoever reaches here may see what fal would have shown them.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

from app.gateway import Gateway
from app.pipeline.operations import Operation, OpKind
from app.pipeline.rewrite import request_urls
from app.store import Completion

_JSON = "application/json"


async def local_answer(gateway: Gateway, op: Operation) -> Response | None:
    """The answer fal would give for a request whose completion is stored; None when fal must be asked."""
    if op.kind not in (OpKind.STATUS, OpKind.RESULT):
        return None
    assert op.request_id is not None
    completion = await gateway.store.get_completion(op.request_id)
    if completion is None:
        return None
    if op.kind is OpKind.STATUS:
        return await _status(gateway, op, completion)
    return _result(gateway, completion)


async def _status(gateway: Gateway, op: Operation, completion: Completion) -> Response | None:
    request_id = completion.request_id
    logs = None
    if op.params.get("logs") == "1":
        logs = await _logs(gateway, request_id)
        if not logs:  # nobody recorded them (no watcher, no poll asking for logs): fal still has them
            return None
    # fal's shape: there is no FAILED status, a failed job is COMPLETED with its error; `logs` is always
    # present (the Python client breaks without it), null unless asked for.
    body: dict = {"status": "COMPLETED", "request_id": request_id, **request_urls(op, request_id, gateway.settings.gateway_url)}
    body["logs"] = logs
    if not completion.ok:
        body["error"] = completion.error or "Request failed"
        error_type = (completion.payload or {}).get("error_type")
        if isinstance(error_type, str):
            body["error_type"] = error_type
    return Response(orjson.dumps(body), status_code=200, headers=_headers(request_id))


async def _logs(gateway: Gateway, request_id: str) -> list:
    """The log lines the event log holds (from the shared watcher or a poll that asked for logs)."""
    logs: list = []
    for event in await gateway.store.events_after(request_id, 0):
        if event.kind == "logs":
            logs.extend(event.data.get("logs") or [])
    return logs


def _result(gateway: Gateway, completion: Completion) -> Response | None:
    # A failed job's result is fal's own error answer, whose status code the completion does not keep:
    # that one (rarely fetched twice) still comes from fal.
    if not completion.ok or completion.payload is None:
        return None
    content = orjson.dumps(completion.payload)
    if len(content) > gateway.settings.local_result_max_bytes:
        return None
    return Response(content, status_code=200, headers=_headers(completion.request_id))


def _headers(request_id: str) -> dict[str, str]:
    return {"content-type": _JSON, "x-fal-request-id": request_id}
