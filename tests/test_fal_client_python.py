"""The real `fal-client` from PyPI, pointed at the gateway, works unchanged (sub-path app ids included)."""

from __future__ import annotations

import fal_client
import fal_client.client
import pytest

from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server

MODELS = ["fal-ai/kling-video/v2.1/standard/image-to-video", "fal-ai/minimax/hailuo-02/pro/image-to-video"]


@pytest.fixture
def fal(gateway: Server, monkeypatch: pytest.MonkeyPatch) -> fal_client.SyncClient:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{gateway.url}/")
    # The client insists on a key; it is a caller's, not fal's, and must never reach fal.
    return fal_client.SyncClient(key="caller-side-dummy-key")


@pytest.mark.parametrize("model_id", MODELS)
def test_subscribe(fal: fal_client.SyncClient, model_id: str) -> None:
    updates: list[object] = []
    result = fal.subscribe(model_id, arguments=VALID_BODIES[model_id], with_logs=True, on_queue_update=updates.append)
    assert result["video"]["url"]
    assert any(isinstance(u, fal_client.InProgress) for u in updates)


@pytest.mark.parametrize("model_id", MODELS)
def test_submit_iter_events_get(fal: fal_client.SyncClient, model_id: str) -> None:
    handle = fal.submit(model_id, arguments=VALID_BODIES[model_id])
    events = list(handle.iter_events(with_logs=True))
    assert isinstance(events[-1], fal_client.Completed)
    assert handle.get()["video"]["url"]


@pytest.mark.parametrize("model_id", MODELS)
def test_cancel(fal: fal_client.SyncClient, model_id: str) -> None:
    handle = fal.submit(model_id, arguments=VALID_BODIES[model_id])
    handle.cancel()
    status = handle.status()
    assert isinstance(status, (fal_client.Queued, fal_client.InProgress, fal_client.Completed))


def test_async_client_subscribe(gateway: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{gateway.url}/")

    async def go() -> dict:
        client = fal_client.AsyncClient(key="caller-side-dummy-key")
        return await client.subscribe(MODELS[0], arguments=VALID_BODIES[MODELS[0]])

    assert asyncio.run(go())["video"]["url"]

