"""Test-only control surface under /_control: the request log, fault injection, webhook attempts."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from .runtime import EmulatorRuntime

MASKED_KEY = "Key <valid>"
LOG_LIMIT = 20_000


class FaultSpec(BaseModel):
    status: int | None = 500
    delay: float = Field(default=0.0, ge=0.0)
    times: int = Field(default=1, ge=1)
    path_contains: str = ""
    method: str | None = None
    drop: bool = False


@dataclass
class Fault:
    status: int | None
    delay: float
    times: int
    path_contains: str
    method: str | None
    drop: bool

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0 or self.path_contains not in path:
            return False
        return self.method is None or self.method.upper() == method.upper()


class ControlState:
    def __init__(self, key: str) -> None:
        self._valid_auth = f"Key {key}"
        # Bounded so a long benchmark against the emulator cannot grow it without limit.
        self.requests: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.faults: list[Fault] = []
        self.webhooks: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)

    def record_request(self, method: str, path: str, query: str, headers: list[tuple[bytes, bytes]], body_size: int) -> None:
        named: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            if name == "authorization" and value == self._valid_auth:
                # The log is served without auth: it must never echo the real key. Any other
                # credential is kept verbatim so tests can prove a caller's own never reached fal.
                value = MASKED_KEY
            named[name] = f"{named[name]}, {value}" if name in named else value
        self.requests.append({"method": method, "path": path, "query": query, "headers": named, "body_size": body_size})

    def take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                fault.times -= 1
                return fault
        return None

    def record_webhook(self, url: str, request_id: str, attempt: int, status_code: int | None, error: str | None) -> None:
        self.webhooks.append(
            {"url": url, "request_id": request_id, "attempt": attempt, "status_code": status_code, "error": error}
        )


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


@router.get("/jobs/{request_id}")
async def get_job(request_id: str, request: Request) -> Any:
    job = _runtime(request).jobs.get(request_id)
    if job is None:
        return JSONResponse({"detail": "Request not found"}, status_code=404)
    return job.snapshot()
