"""Polls answered from what the gateway already knows (issue 16 items 1 and 2), over real servers.

A finished request's status and result come from the store (the emulator may be stopped); concurrent
polls of a request in flight share one upstream call; ownership still applies to every poll.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Upstream, leak_checked_client, wait_completed
from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server, start_emulator, start_gateway

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
KEYS = {"alice": "alice-key-" + uuid.uuid4().hex, "bob": "bob-key-" + uuid.uuid4().hex}
API_KEYS = ",".join(f"{who}:{key}" for who, key in KEYS.items())


def _finished(client: httpx.Client) -> tuple[dict, dict, httpx.Response]:
    """Submit, poll (with logs) to COMPLETED, fetch the result: the submit answer, last status, result."""
    submitted = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    status = wait_completed(client, body["status_url"])
    result = client.get(body["response_url"])
    assert result.status_code == 200, result.text
    return body, status, result


def _status_calls(upstream: Upstream, request_id: str) -> int:
    return sum(1 for r in upstream.requests() if r["method"] == "GET" and r["path"].endswith(f"{request_id}/status"))


@pytest.fixture
def own_emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=1.0)
    yield server
    server.stop()


def test_finished_request_is_answered_with_fal_stopped(own_emulator: Server) -> None:
    gateway = start_gateway(own_emulator)
    try:
        with leak_checked_client(gateway.url) as client:
            body, status, result = _finished(client)
            assert status["logs"], "the emulator's job logs something"
            own_emulator.stop()  # from here on, fal cannot answer anything

            polled = client.get(body["status_url"], params={"logs": 1})
            assert polled.status_code == 200, polled.text
            answer = polled.json()
            assert answer["status"] == "COMPLETED" and answer["request_id"] == body["request_id"]
            for field in ("response_url", "status_url", "cancel_url"):
                assert answer[field] == body[field]  # the gateway's URLs, as a poll through fal would give
            assert answer["logs"] == status["logs"], "logs=1 on a cached completion still shows the logs"
            assert polled.headers["x-fal-request-id"] == body["request_id"]

            without_logs = client.get(body["status_url"], params={"logs": 0}).json()
            assert "logs" in without_logs and without_logs["logs"] is None

            fetched = client.get(body["response_url"])
            assert fetched.status_code == 200, fetched.text
            assert fetched.json() == result.json()
            assert fetched.headers["x-fal-request-id"] == body["request_id"]
            assert fetched.headers["content-type"].startswith("application/json")
    finally:
        gateway.stop()


def test_logs_from_the_webhook_path_survive_a_cached_poll(own_emulator: Server) -> None:
    """The completion came from fal's webhook, the logs from the poll that saw COMPLETED with logs=1."""
    gateway = start_gateway(own_emulator)
    upstream = Upstream(own_emulator)
    try:
        with leak_checked_client(gateway.url) as client:
            body, status, _ = _finished(client)
            upstream.clear()
            again = client.get(body["status_url"], params={"logs": "true"})
            assert again.status_code == 200 and again.json()["logs"] == status["logs"]
            assert upstream.count() == 0, upstream.requests()
    finally:
        gateway.stop()


def test_fifty_concurrent_polls_cause_one_upstream_call(own_emulator: Server) -> None:
    upstream = Upstream(own_emulator)
    # A long job: in flight for the whole test. A long max age so 50 threads starting a little apart
    # still land in one window; the delay keeps the one upstream call open while the others arrive.
    gateway = start_gateway(own_emulator, FALGATE_STATUS_MAX_AGE_MS="3000")
    try:
        with leak_checked_client(gateway.url) as client:
            body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            request_id = body["request_id"]
            upstream.clear()
            upstream.fault(status=None, delay=0.5, times=1, path_contains=f"{request_id}/status")

            def poll(_: int) -> httpx.Response:
                with httpx.Client(base_url=gateway.url, timeout=10) as own:
                    return own.get(body["status_url"])

            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                answers = list(pool.map(poll, range(50)))
            assert {a.status_code for a in answers} == {202}, {a.status_code for a in answers}
            assert all(a.json()["request_id"] == request_id for a in answers)
            assert all(a.json()["status_url"] == body["status_url"] for a in answers)
            assert _status_calls(upstream, request_id) == 1, upstream.requests()
    finally:
        gateway.stop()


def test_answer_is_reused_only_for_the_max_age(own_emulator: Server) -> None:
    upstream = Upstream(own_emulator)
    gateway = start_gateway(own_emulator, FALGATE_STATUS_MAX_AGE_MS="0")
    try:
        with leak_checked_client(gateway.url) as client:
            body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            upstream.clear()
            for _ in range(3):
                assert client.get(body["status_url"]).status_code == 202
            assert _status_calls(upstream, body["request_id"]) == 3  # one after another: nothing reused
    finally:
        gateway.stop()


def test_a_failed_answer_is_not_reused(own_emulator: Server) -> None:
    upstream = Upstream(own_emulator)
    gateway = start_gateway(own_emulator, FALGATE_STATUS_MAX_AGE_MS="60000", FALGATE_READ_RETRIES="0")
    try:
        with leak_checked_client(gateway.url) as client:
            body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            upstream.fault(status=503, times=1, path_contains=f"{body['request_id']}/status")
            assert client.get(body["status_url"]).status_code == 503
            assert client.get(body["status_url"]).status_code == 202  # fal asked again, not the 503 replayed
    finally:
        gateway.stop()


def test_another_caller_gets_404_for_a_cached_request(own_emulator: Server) -> None:
    gateway = start_gateway(own_emulator, FALGATE_AUTH="api_key", FALGATE_API_KEYS=API_KEYS, FALGATE_ALLOW_ANONYMOUS="false")
    try:
        alice = leak_checked_client(gateway.url, headers={"Authorization": f"Bearer {KEYS['alice']}"})
        bob = leak_checked_client(gateway.url, headers={"Authorization": f"Bearer {KEYS['bob']}"})
        with alice, bob:
            in_flight = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            assert alice.get(in_flight["status_url"]).status_code == 202  # a shared answer now exists
            assert bob.get(in_flight["status_url"]).status_code == 404
            body, _, _ = _finished(alice)
            assert alice.get(body["status_url"]).status_code == 200  # answered from the store
            for url in (body["status_url"], body["response_url"]):
                refused = bob.get(url)
                assert refused.status_code == 404, refused.text
                assert body["request_id"] not in refused.text
    finally:
        gateway.stop()


def test_result_above_the_size_setting_comes_from_fal(own_emulator: Server) -> None:
    upstream = Upstream(own_emulator)
    gateway = start_gateway(own_emulator, FALGATE_LOCAL_RESULT_MAX_BYTES="16")
    try:
        with leak_checked_client(gateway.url) as client:
            body, _, result = _finished(client)
            upstream.clear()
            fetched = client.get(body["response_url"])
            assert fetched.status_code == 200 and fetched.json() == result.json()
            fetches = [r for r in upstream.requests() if r["method"] == "GET" and r["path"].endswith(body["request_id"])]
            assert len(fetches) == 1, upstream.requests()
            # The status of the same finished request still needs no upstream call.
            assert client.get(body["status_url"]).status_code == 200
            assert _status_calls(upstream, body["request_id"]) == 0
    finally:
        gateway.stop()


def test_cancelled_request_is_answered_with_fal_stopped(own_emulator: Server) -> None:
    upstream = Upstream(own_emulator)
    gateway = start_gateway(own_emulator)
    try:
        with leak_checked_client(gateway.url) as client:
            body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            assert client.put(body["cancel_url"]).status_code == 202
            deadline = time.monotonic() + 10
            while True:  # until fal's webhook (ERROR, "Invalid status code: 400") is stored
                upstream.clear()
                polled = client.get(body["status_url"])
                if polled.status_code == 200 and _status_calls(upstream, body["request_id"]) == 0:
                    break
                assert time.monotonic() < deadline, "the cancelled request was never answered from the store"
                time.sleep(0.1)
            own_emulator.stop()
            status = client.get(body["status_url"])
            assert status.status_code == 200
            assert status.json()["status"] == "COMPLETED" and status.json()["error"] == "Request was cancelled"
            result = client.get(body["response_url"])
            assert result.status_code == 400, result.text  # fal's own answer for a cancelled job's result
            assert result.json() == {"detail": "Request was cancelled"}
            assert result.headers["x-fal-request-id"] == body["request_id"]
    finally:
        gateway.stop()
