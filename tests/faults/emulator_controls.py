"""The emulator's fault controls, as the fault scenarios use them: failing fal calls, webhook rules."""

from __future__ import annotations

import time

import httpx

from tests.servers import Server


class FalControls:
    def __init__(self, emulator: Server) -> None:
        self.url = emulator.url

    def fail(self, **spec: object) -> None:
        """The next `times` calls matching `path_contains`/`path_endswith`/`method` fail (status, delay or drop)."""
        httpx.post(f"{self.url}/_control/faults", json=spec).raise_for_status()

    def webhook_rule(self, action: str, request_id: str | None = None, times: int = 1, copies: int = 2) -> None:
        rule = {"action": action, "request_id": request_id, "times": times, "copies": copies}
        httpx.post(f"{self.url}/_control/webhook-rules", json=rule).raise_for_status()

    def send_webhook(self, request_id: str) -> bool:
        answer = httpx.post(f"{self.url}/_control/jobs/{request_id}/webhook", timeout=30)
        answer.raise_for_status()
        return answer.json()["delivered"]

    def webhooks(self, request_id: str) -> list[dict]:
        return [w for w in httpx.get(f"{self.url}/_control/webhooks").json() if w["request_id"] == request_id]

    def requests(self, path_contains: str = "") -> list[dict]:
        return [r for r in httpx.get(f"{self.url}/_control/requests").json() if path_contains in r["path"]]

    def wait_finished(self, request_id: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = httpx.get(f"{self.url}/_control/jobs/{request_id}").json()
            if job.get("outcome"):
                return job
            time.sleep(0.05)
        raise AssertionError(f"emulator job {request_id} did not finish in {timeout}s")

    def reset(self) -> None:
        for path in ("faults", "webhook-rules", "webhooks", "requests"):
            httpx.delete(f"{self.url}/_control/{path}")
