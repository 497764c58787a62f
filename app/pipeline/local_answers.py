"""Answers to a finished request's status poll and result fetch, built from the store with no call to fal.

Called only after the caller was authenticated, rate limited and checked as the request's owner: the
store is per request, so whoever reaches here may see what fal would have shown them.
"""

from __future__ import annotations

import re

import orjson
from starlette.responses import Response

from app.gateway import Gateway
from app.pipeline.operations import Operation, OpKind
from app.pipeline.rewrite import request_urls
from app.store import Completion

_JSON = "application/json"
# How a failed completion names fal's status code: fal's webhook ("Invalid status code: 422") or our own
# result fetch (relay/completions.completion_from_result: "fal answered 500").
_ERROR_CODE = re.compile(r"^(?:Invalid status code:|fal answered) ([45]\d\d)$")


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
        detail = (completion.payload or {}).get("detail")  # fal's status shows its error body's own words
        body["error"] = detail if isinstance(detail, str) else completion.error or "Request failed"
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
    if completion.payload is None:
        return None
    code = 200 if completion.ok else _failed_code(completion)
    if code is None:  # a failure whose status code the completion does not name: fal still answers it
        return None
    content = orjson.dumps(completion.payload)
    if len(content) > gateway.settings.local_result_max_bytes:
        return None
    headers = _headers(completion.request_id)
    error_type = completion.payload.get("error_type")
    if not completion.ok and isinstance(error_type, str):
        headers["x-fal-error-type"] = error_type
    return Response(content, status_code=code, headers=headers)


def _failed_code(completion: Completion) -> int | None:
    match = _ERROR_CODE.match(completion.error or "")
    return int(match.group(1)) if match else None


def _headers(request_id: str) -> dict[str, str]:
    return {"content-type": _JSON, "x-fal-request-id": request_id}
