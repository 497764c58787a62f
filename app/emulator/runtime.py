"""Everything one emulator instance owns: jobs, files, keys, the control log, background tasks.

It works without `startup()`: the HTTP client and tasks are created lazily on the running loop, so a
parent app that mounts the emulator (whose lifespan then never runs) needs nothing at start. Such a
parent should `await emulator_app.state.emulator.shutdown()` in its own lifespan to stop pending
webhook deliveries and close the client; a standalone emulator does both from its lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx

from .config import EmulatorConfig
from .control import ControlState, WebhookAction
from .jobs import Job, JobStore, run_job
from .model_catalog import category_of, makes_image
from .signing import WebhookSigner
from .storage import FileStore
from .webhooks import deliver_webhook, dispatch_webhook, early_webhook_body

SAMPLE_VIDEO = Path(__file__).resolve().parent / "assets" / "sample.mp4"
SAMPLE_IMAGE = Path(__file__).resolve().parent / "assets" / "sample.png"  # 64x36, for image categories

log = logging.getLogger("falgate.emulator")


class EmulatorRuntime:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.jobs = JobStore(config.job_ttl_seconds)
        self.files = FileStore(config.upload_token_seconds, config.job_ttl_seconds)
        self.signer = WebhookSigner()
        self.control = ControlState(config.key)
        self.video_size = SAMPLE_VIDEO.stat().st_size
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        # A client is tied to the loop it first ran on; a mounted emulator can outlive a loop
        # (e.g. one TestClient after another), so a new loop gets a new client.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._client_loop = loop
        return self._client

    async def startup(self) -> None:
        """Optional: creates the shared client up front."""
        _ = self.client

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("emulator background task failed", exc_info=task.exception())

    def submit(self, model_id: str, app_id: str, job_input: dict[str, Any], base_url: str, webhook_url: str | None) -> Job:
        job = Job(
            request_id=str(uuid.uuid4()),
            model_id=model_id,
            app_id=app_id,
            input=job_input,
            base_url=base_url,
            webhook_url=webhook_url,
            video_size=self.video_size,
            image=makes_image(category_of(model_id, self.config.schema_dir)),
        )
        self.jobs.add(job)
        on_finish = self._on_finish
        if webhook_url and self.control.take_webhook_rule(job.request_id, WebhookAction.EARLY) is not None:
            # Sent now; the submit is answered only once the first attempt was (the route waits for
            # `early_webhook_tried`), so the webhook really comes first. The finish then sends nothing.
            job.early_webhook_tried = asyncio.Event()
            body = early_webhook_body(job)
            self.spawn(deliver_webhook(self.client, self.signer, self.config, self.control, job, body))
            on_finish = _no_webhook
        self.spawn(run_job(job, self.config.job_seconds, on_finish))
        return job

    async def _on_finish(self, job: Job) -> None:
        await dispatch_webhook(self.client, self.signer, self.config, self.control, job)


async def _no_webhook(job: Job) -> None:
    return None
