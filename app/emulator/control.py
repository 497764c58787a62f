"""What the test-only control surface (app/emulator/control_routes.py) sets and reads: the request log,
injected faults, webhook rules (withhold, duplicate, send early), webhook attempts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

MASKED_KEY = "Key <valid>"
LOG_LIMIT = 20_000


class FaultSpec(BaseModel):
    status: int | None = 500
    delay: float = Field(default=0.0, ge=0.0)
    times: int = Field(default=1, ge=1)
    path_contains: str = ""
    path_endswith: str = ""  # e.g. the request id: its result fetch, not its status
    method: str | None = None
    drop: bool = False


class WebhookAction(StrEnum):
    WITHHOLD = "withhold"  # never send it (fal could not reach us)
    DUPLICATE = "duplicate"  # send it, then send it again (fal's at-least-once delivery)
    EARLY = "early"  # send it at submit, before the job has finished or the submit was answered


class WebhookRuleSpec(BaseModel):
    """`times` webhooks (of `request_id`, or of any request) get `action` instead of the normal delivery."""

    action: WebhookAction
    request_id: str | None = None
    times: int = Field(default=1, ge=1)
    copies: int = Field(default=2, ge=2, le=20)  # DUPLICATE: how many times it is sent in all


@dataclass
class WebhookRule:
    action: WebhookAction
    request_id: str | None
    times: int
    copies: int

    def matches(self, request_id: str, actions: frozenset[WebhookAction]) -> bool:
        if self.times <= 0 or self.action not in actions:
            return False
        return self.request_id is None or self.request_id == request_id


@dataclass
class Fault:
    status: int | None
    delay: float
    times: int
    path_contains: str
    path_endswith: str
    method: str | None
    drop: bool

    def matches(self, method: str, path: str) -> bool:
        if self.times <= 0 or self.path_contains not in path or not path.endswith(self.path_endswith):
            return False
        return self.method is None or self.method.upper() == method.upper()


class ControlState:
    def __init__(self, key: str) -> None:
        self._valid_auth = f"Key {key}"
        # Bounded so a long benchmark against the emulator cannot grow it without limit.
        self.requests: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.faults: list[Fault] = []
        self.webhooks: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self.webhook_rules: list[WebhookRule] = []

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

    def take_webhook_rule(self, request_id: str, *actions: WebhookAction) -> WebhookRule | None:
        for rule in self.webhook_rules:
            if rule.matches(request_id, frozenset(actions)):
                rule.times -= 1
                return rule
        return None
