"""Small HTTP helpers shared by the emulator's routes."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from .runtime import EmulatorRuntime


def runtime_of(request: Request) -> EmulatorRuntime:
    return request.app.state.emulator


def public_base(request: Request) -> str:
    """The emulator's external base URL: configured, or this request's origin plus the mount prefix.

    Starlette's `request.base_url` points at the outermost app's root, so a mounted emulator would
    hand out URLs without its prefix; `root_path` is the prefix of this (sub-)app.
    """
    configured = runtime_of(request).config.public_url
    if configured:
        return configured.rstrip("/")
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}{root}"


def fal_json(status: int, body: dict[str, Any], request_id: str | None = None) -> JSONResponse:
    headers = {"x-fal-request-id": request_id} if request_id else {}
    if isinstance(body.get("error_type"), str):
        headers["X-Fal-Error-Type"] = body["error_type"]
    return JSONResponse(body, status_code=status, headers=headers)


def not_found() -> JSONResponse:
    return JSONResponse({"detail": "Request not found"}, status_code=404)


async def read_json_object(request: Request) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object, or the pydantic-style 422 fal answers for anything else."""
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        position = getattr(exc, "pos", 0)
        return _unprocessable(["body", position], f"JSON decode error: {exc}", "json_invalid")
    if not isinstance(data, dict):
        return _unprocessable(["body"], "Input should be a valid dictionary or object", "dict_type")
    return data


def _unprocessable(loc: list[Any], msg: str, error_type: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": error_type}]}, status_code=422)
