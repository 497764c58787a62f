"""Upstream trouble is mapped to a clear JSON answer, never a hang; reads retry, submits never re-send."""

from __future__ import annotations

import tempfile
import time

import httpx
import pytest

from tests.conftest import Upstream, leak_checked_client
from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server, free_port, start_gateway

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


def _submit(client: httpx.Client) -> dict:
    response = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
    assert response.status_code == 200, response.text
    return response.json()


def test_upstream_500_is_relayed_with_its_body(client: httpx.Client, upstream: Upstream) -> None:
    body = _submit(client)
    upstream.fault(status=500, times=1, path_contains="/status")
    response = client.get(body["status_url"])
    assert response.status_code == 500
    assert response.json() == {"detail": "Injected fault"}


@pytest.fixture(scope="module")
def impatient_gateway(emulator: Server):
    server = start_gateway(emulator, FALGATE_UPSTREAM_TIMEOUT="0.5", FALGATE_READ_RETRIES="2")
    yield server
    server.stop()


def test_slow_upstream_is_504_not_a_hang(impatient_gateway: Server, upstream: Upstream) -> None:
    with leak_checked_client(impatient_gateway.url) as client:
        body = _submit(client)
        upstream.fault(delay=3.0, times=5, path_contains="/status")
        started = time.monotonic()
        response = client.get(body["status_url"])
        assert response.status_code == 504
        assert response.json()["detail"]
        assert time.monotonic() - started < 2.9, "a timed-out read is not retried into a hang"
        upstream.clear_faults()


def test_submit_slow_upstream_is_504_and_sent_once(impatient_gateway: Server, upstream: Upstream) -> None:
    with leak_checked_client(impatient_gateway.url) as client:
        upstream.clear()
        upstream.fault(delay=2.0, times=5, path_contains="image-to-video", method="POST")
        response = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
        assert response.status_code == 504
        time.sleep(0.3)
        submits = [r for r in upstream.requests() if r["method"] == "POST"]
        assert len(submits) == 1, "a submit whose bytes may have reached fal is never re-sent"
        upstream.clear_faults()


def test_submit_dropped_after_sending_is_502_and_sent_once(impatient_gateway: Server, upstream: Upstream) -> None:
    # fal read the whole submit, then the connection closed without an answer: the job may be running.
    with leak_checked_client(impatient_gateway.url) as client:
        upstream.clear()
        upstream.fault(drop=True, times=5, path_contains="image-to-video", method="POST")
        response = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
        assert response.status_code == 502, response.text
        assert response.json()["error_type"] == "upstream_unavailable"
        time.sleep(0.3)
        submits = [r for r in upstream.requests() if r["method"] == "POST"]
        assert len(submits) == 1, "a submit whose bytes reached fal is never re-sent"
        upstream.clear_faults()


def test_dropped_connection_on_read_is_retried(impatient_gateway: Server, upstream: Upstream) -> None:
    with leak_checked_client(impatient_gateway.url) as client:
        body = _submit(client)
        upstream.clear()
        upstream.fault(drop=True, times=1, path_contains="/status")
        response = client.get(body["status_url"])
        assert response.status_code in (200, 202), response.text
        assert len([r for r in upstream.requests() if r["path"].endswith("/status")]) == 2


def test_refused_connection_is_502(emulator: Server) -> None:
    # Own a request through a working gateway, then read it through one whose upstream is gone.
    store = f"sqlite:///{tempfile.mkdtemp()}/falgate.db"
    working = start_gateway(emulator, FALGATE_STORE_URL=store)
    with leak_checked_client(working.url) as client:
        request_id = _submit(client)["request_id"]
    working.stop()
    dead = f"http://127.0.0.1:{free_port()}"
    server = start_gateway(
        None,
        FALGATE_STORE_URL=store,
        FALGATE_UPSTREAM="live",
        FALGATE_FAL_QUEUE_URL=dead,
        FALGATE_FAL_RUN_URL=dead,
        FALGATE_FAL_REST_URL=dead,
        FALGATE_READ_RETRIES="1",
    )
    try:
        with leak_checked_client(server.url) as client:
            submit = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
            assert submit.status_code == 502
            assert submit.json()["detail"]
            status = client.get(f"/fal-ai/kling-video/requests/{request_id}/status")
            assert status.status_code == 502
            assert status.json()["error_type"] == "upstream_unavailable"
    finally:
        server.stop()
