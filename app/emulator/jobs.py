"""The job state machine: IN_QUEUE (position counting down) -> IN_PROGRESS (logs) -> COMPLETED.

fal has no FAILED status: a failed or cancelled request is COMPLETED, carries `error`/`error_type`
on its status, and its result call answers with the error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"

OK = "ok"
FAILED = "failed"
FAILED_VALIDATION = "failed_validation"
CANCELLED = "cancelled"

FIRST_QUEUE_POSITION = 2
PROGRESS_STEPS = 10
QUEUE_SHARE = 0.25
SWEEP_INTERVAL = 60.0

SAMPLE_VIDEO_PATH = "/files/sample.mp4"
SAMPLE_IMAGE_PATH = "/files/sample.png"


def app_id_of(model_id: str) -> str | None:
    """owner/app (three segments for workflows/ and comfy/), as fal's per-request paths use it."""
    parts = [p for p in model_id.strip("/").split("/") if p]
    keep = 3 if parts and parts[0] in ("workflows", "comfy") else 2
    if len(parts) < keep:
        return None
    return "/".join(parts[:keep])


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Job:
    request_id: str
    model_id: str
    app_id: str
    input: dict[str, Any]
    base_url: str
    webhook_url: str | None = None
    video_size: int = 0
    image: bool = False  # an image category (text-to-image, ...): the result is an image, not a video
    status: str = IN_QUEUE
    queue_position: int = FIRST_QUEUE_POSITION
    logs: list[dict[str, str]] = field(default_factory=list)
    outcome: str | None = None
    inference_time: float | None = None
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    version: int = 0
    # Set once an EARLY rule's first webhook attempt has been answered: the submit waits for it.
    early_webhook_tried: asyncio.Event | None = field(default=None, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _cancel: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    # ---- URLs and bodies, shaped like fal's -------------------------------------------------

    @property
    def response_url(self) -> str:
        return f"{self.base_url}/queue/{self.app_id}/requests/{self.request_id}"

    def urls(self) -> dict[str, str]:
        return {
            "response_url": self.response_url,
            "status_url": self.response_url + "/status",
            "cancel_url": self.response_url + "/cancel",
        }

    def submit_body(self) -> dict[str, Any]:
        return {"status": IN_QUEUE, "request_id": self.request_id, **self.urls(), "queue_position": self.queue_position}

    def status_body(self, with_logs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status, "request_id": self.request_id, **self.urls()}
        if self.status == IN_QUEUE:
            body["queue_position"] = self.queue_position
            return body
        # The Python client breaks when `logs` is missing, so it is always there, null when not asked for.
        body["logs"] = list(self.logs) if with_logs else None
        if self.status == COMPLETED:
            body["metrics"] = {"inference_time": self.inference_time}
            error = self.error()
            if error is not None:
                body["error"], body["error_type"] = error
        return body

    def error(self) -> tuple[str, str] | None:
        if self.outcome == CANCELLED:
            return "Request was cancelled", "request_cancelled"
        if self.outcome == FAILED:
            return "Internal server error: the model crashed ([fail] in prompt)", "internal_server_error"
        if self.outcome == FAILED_VALIDATION:
            return "Unprocessable input ([fail422] in prompt)", "validation_error"
        return None

    def result(self) -> tuple[int, dict[str, Any]]:
        """The status code and body the result call answers with."""
        if self.status != COMPLETED:
            return 400, {"detail": "Request is still in progress"}
        if self.outcome == CANCELLED:
            return 400, {"detail": "Request was cancelled"}
        if self.outcome == FAILED:
            detail, error_type = self.error() or ("", "")
            return 500, {"detail": detail, "error_type": error_type}
        if self.outcome == FAILED_VALIDATION:
            detail = [{"loc": ["body", "prompt"], "msg": "Injected validation failure", "type": "value_error"}]
            return 422, {"detail": detail}
        if self.image:
            return 200, {
                "images": [{"url": self.base_url + SAMPLE_IMAGE_PATH, "content_type": "image/png", "width": 64, "height": 36}],
                "seed": self._seed(),
            }
        return 200, {
            "video": {
                "url": self.base_url + SAMPLE_VIDEO_PATH,
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": self.video_size,
            },
            "seed": self._seed(),
        }

    def _seed(self) -> int:
        seed = self.input.get("seed")
        if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
            return seed
        # Stable per request so the result and the webhook payload agree.
        return uuid.UUID(self.request_id).int % 2**31

    def snapshot(self) -> dict[str, Any]:
        """Internal view for /_control/jobs/{id}."""
        return {
            "request_id": self.request_id,
            "model_id": self.model_id,
            "app_id": self.app_id,
            "input": self.input,
            "webhook_url": self.webhook_url,
            "status": self.status,
            "queue_position": self.queue_position,
            "outcome": self.outcome,
            "logs": list(self.logs),
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }

    # ---- change notification ----------------------------------------------------------------

    def _touch(self) -> None:
        self.version += 1
        old, self._changed = self._changed, asyncio.Event()
        old.set()

    async def wait_change(self, since_version: int, timeout: float | None) -> bool:
        """True once the job changed after `since_version`; False when `timeout` ran out first."""
        if self.version != since_version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_finished(self) -> None:
        while self.status != COMPLETED:
            await self.wait_change(self.version, None)

    def request_cancel(self) -> bool:
        """False when the job already finished (fal's ALREADY_COMPLETED)."""
        if self.status == COMPLETED:
            return False
        self._cancel.set()
        return True

    def _log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": message, "level": level, "source": "user", "timestamp": _now_iso()})
        self._touch()

    def _finish(self, outcome: str, inference_time: float) -> None:
        self.outcome = outcome
        self.inference_time = round(inference_time, 3)
        self.status = COMPLETED
        self.finished_at = time.time()
        self._touch()

    async def _pause(self, seconds: float) -> bool:
        """Sleep, waking early on cancellation; True means the job was cancelled."""
        if self._cancel.is_set():
            return True
        try:
            await asyncio.wait_for(self._cancel.wait(), max(seconds, 0.0))
        except TimeoutError:
            return False
        return True


def _injected_failure(job_input: dict[str, Any]) -> str | None:
    prompt = job_input.get("prompt")
    if not isinstance(prompt, str):
        return None
    if "[fail422]" in prompt:
        return FAILED_VALIDATION
    if "[fail]" in prompt:
        return FAILED
    return None


async def run_job(job: Job, job_seconds: float, on_finish: Callable[[Job], Awaitable[None]]) -> None:
    """Drive one job through fal's states in `job_seconds`, then hand it to `on_finish` (webhooks)."""
    queue_step = job_seconds * QUEUE_SHARE / (FIRST_QUEUE_POSITION + 1)
    progress_step = job_seconds * (1 - QUEUE_SHARE) / PROGRESS_STEPS
    started = time.monotonic()
    outcome = await _queue_phase(job, queue_step)
    if outcome is None:
        started = time.monotonic()
        outcome = await _progress_phase(job, progress_step)
    job._finish(outcome, time.monotonic() - started)
    await on_finish(job)


async def _queue_phase(job: Job, step: float) -> str | None:
    while True:
        if await job._pause(step):
            return CANCELLED
        if job.queue_position == 0:
            return None
        job.queue_position -= 1
        job._touch()


async def _progress_phase(job: Job, step: float) -> str:
    job.status = IN_PROGRESS
    job._log("Loading model")
    for number in range(1, PROGRESS_STEPS + 1):
        if await job._pause(step):
            job._log("Cancellation requested, stopping")
            return CANCELLED
        job._log(f"Step {number}/{PROGRESS_STEPS}")
    failure = _injected_failure(job.input)
    if failure is not None:
        job._log("Generation failed (injected by the prompt)", level="ERROR")
        return failure
    return OK


class JobStore:
    """In-memory jobs by request id; finished ones are dropped after `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._jobs: dict[str, Job] = {}
        self._last_sweep = time.monotonic()

    def add(self, job: Job) -> None:
        self._sweep()
        self._jobs[job.request_id] = job

    def get(self, request_id: str) -> Job | None:
        return self._jobs.get(request_id)

    def find(self, app_id: str, request_id: str) -> Job | None:
        """A job only answers under its own app id, as fal 404s a request id asked for under another app."""
        job = self._jobs.get(request_id)
        return job if job is not None and job.app_id == app_id else None

    def _sweep(self) -> None:
        # At most once a minute: a benchmark submits thousands of jobs, each add must stay O(1).
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = time.monotonic()
        cutoff = time.time() - self._ttl
        stale = [rid for rid, job in self._jobs.items() if job.finished_at is not None and job.finished_at < cutoff]
        for rid in stale:
            del self._jobs[rid]
