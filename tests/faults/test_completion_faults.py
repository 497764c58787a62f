"""Transient fal errors on the gateway's own calls never become completions; a verified webhook completes.

fal's status says COMPLETED, then our result fetch gets 503s (or a dropped connection): the request must
not turn FAILED, nobody is refunded, no `error` reaches a watcher, and fal's webhook (sent later) is the
completion every sink sees, once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.relay.client_webhooks import new_secret
from tests.faults.emulator_controls import FalControls
from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import Tally
from tests.relay_helpers import (
    KLING,
    KLING_BODY,
    Receiver,
    auth_env,
    bearer,
    caller_keys,
    read_sse,
    request_state,
    submit,
    wait_state,
    webhook_env,
)
from tests.servers import Server, start_emulator, start_gateway


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=0.5, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


def _bodies(receiver: Receiver) -> list[dict]:
    return [json.loads(r.body) for r in receiver.received]


@pytest.mark.parametrize("fault", [{"status": 503}, {"drop": True}], ids=["503", "dropped"])
def test_a_failed_result_fetch_after_completed_is_not_a_failure(
    emulator: Server, fal: FalControls, receiver: Receiver, tally: Tally, fault: dict
) -> None:
    keys = caller_keys("ivy")
    gateway = start_gateway(emulator, FALGATE_BUDGET_PER_DAY="10", **auth_env(keys), **webhook_env(new_secret()))
    statuses: list[int] = []
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["ivy"]), timeout=30) as ivy:
            fal.webhook_rule("withhold")  # fal's webhook comes later, by hand
            rid = submit(ivy, fal_webhook=receiver.hook_url)
            spent = ivy.get("/v1/usage").json()["spent"]
            fal.wait_finished(rid)
            fal.fail(**fault, times=10, path_endswith=rid, method="GET")  # every result fetch, for now
            status = ivy.get(f"/{KLING}/requests/{rid}/status")
            statuses.append(status.status_code)
            assert status.json()["status"] == "COMPLETED"
            time.sleep(1.0)  # the gateway's own retries of the result fetch
            state = request_state(ivy, rid)
            assert state != "FAILED", "a transient fetch error became a failure"
            assert ivy.get("/v1/usage").json()["spent"] == spent, "refunded on a guess"
            assert all(b["status"] != "ERROR" for b in _bodies(receiver))
            httpx.delete(f"{emulator.url}/_control/faults")
            assert fal.send_webhook(rid), "fal's late webhook was refused"
            [got] = receiver.wait_for(1, timeout=10)
            wait_state(ivy, rid, "COMPLETED", timeout=5)
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["ivy"]), deadline=5)
            statuses.append(read.status)
            assert read.kinds == ["completed"], read.kinds
            time.sleep(0.5)
            usage = ivy.get("/v1/usage").json()
            bodies = _bodies(receiver)
            tally.record(
                "transient fal errors",
                results_lost=sum(1 for b in bodies if b["status"] != "OK") + (not bodies),
                double_deliveries=max(0, len(bodies) - 1),
                wrong_refunds=int(usage["spent"] != spent),
                undocumented_5xx=tally.undocumented_5xx(statuses),
            )
            assert json.loads(got.body)["status"] == "OK" and len(bodies) == 1
            assert usage["spent"] == spent and usage["inflight"] == 0, usage
    finally:
        gateway.stop()


def test_the_poller_retries_a_transient_result_error_instead_of_failing(
    emulator: Server, fal: FalControls, receiver: Receiver, tally: Tally
) -> None:
    keys = caller_keys("jon")
    gateway = start_gateway(
        emulator,
        FALGATE_BUDGET_PER_DAY="10",
        FALGATE_WEBHOOK_GRACE_SECONDS="0",
        FALGATE_POLL_INTERVAL_SECONDS="0.3",
        **auth_env(keys),
        **webhook_env(new_secret()),
    )
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["jon"]), timeout=30) as jon:
            fal.webhook_rule("withhold")
            rid = submit(jon, fal_webhook=receiver.hook_url, body=KLING_BODY)
            spent = jon.get("/v1/usage").json()["spent"]
            fal.fail(status=503, times=3, path_endswith=rid, method="GET")  # the first result fetches
            [got] = receiver.wait_for(1, timeout=15)
            wait_state(jon, rid, "COMPLETED", timeout=5)
            usage = jon.get("/v1/usage").json()
            bodies = _bodies(receiver)
            tally.record(
                "transient fal errors",
                results_lost=int(bodies[0]["status"] != "OK"),
                double_deliveries=max(0, len(bodies) - 1),
                wrong_refunds=int(usage["spent"] != spent),
            )
            assert json.loads(got.body)["status"] == "OK", got.body
            assert usage["spent"] == spent
            assert len([r for r in fal.requests(rid) if r["path"].endswith(rid)]) >= 4, "the fetch was retried"
    finally:
        gateway.stop()


def test_a_completion_that_failed_halfway_is_finished_by_fals_retry(
    emulator: Server, fal: FalControls, receiver: Receiver, tally: Tally, private_redis: PrivateRedis
) -> None:
    """The store refuses the client-webhook queue (after the record turned terminal); fal's retry queues it."""
    keys = caller_keys("kit")
    gateway = start_gateway(
        emulator, FALGATE_STORE_URL=private_redis.url, **auth_env(keys), **webhook_env(new_secret())
    )
    admin = redis.Redis.from_url(private_redis.url)
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["kit"]), timeout=30) as kit:
            fal.webhook_rule("withhold")
            rid = submit(kit, fal_webhook=receiver.hook_url)
            fal.wait_finished(rid)
            # Deliveries' keys (falgate:dlv*) become off limits: everything before the queueing works. The
            # rate limiter's windows (falgate-ratelimit*) stay: every /v1/* read counts against the caller.
            allowed = ("~falgate:[^d]*", "~falgate:done*", "~falgate-*")
            admin.execute_command("ACL", "SETUSER", "default", "resetkeys", *allowed)
            fal.send_webhook(rid)  # fails on the queueing step (and so do the emulator's quick retries)
            assert request_state(kit, rid) == "COMPLETED", "the record turned terminal before the failure"
            admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~*")
            assert fal.send_webhook(rid)  # fal's later retry of the same webhook
            receiver.wait_for(1, timeout=10)
            time.sleep(0.5)
            bodies = _bodies(receiver)
            tally.record(
                "duplicated webhooks",
                results_lost=int(not bodies),
                double_deliveries=max(0, len(bodies) - 1),
            )
            assert len(bodies) == 1 and bodies[0]["status"] == "OK"
    finally:
        admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~*")
        gateway.stop()


def test_transient_errors_on_status_and_stream_calls_lose_nothing(
    emulator: Server, fal: FalControls, receiver: Receiver, tally: Tally
) -> None:
    """fal's status polls and status streams fail for a while (503, dropped); the webhook never comes:
    the poller and the watcher keep trying, and the result reaches every sink once, unrefunded."""
    keys = caller_keys("uma")
    gateway = start_gateway(
        emulator,
        FALGATE_BUDGET_PER_DAY="10",
        FALGATE_WEBHOOK_GRACE_SECONDS="0",
        FALGATE_POLL_INTERVAL_SECONDS="0.3",
        **auth_env(keys),
        **webhook_env(new_secret()),
    )
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["uma"]), timeout=30) as uma:
            fal.webhook_rule("withhold")
            fal.fail(status=503, times=4, path_endswith="/status", method="GET")
            fal.fail(drop=True, times=2, path_endswith="/status", method="GET")
            fal.fail(status=503, times=2, path_contains="/status/stream")
            rid = submit(uma, fal_webhook=receiver.hook_url)
            spent = uma.get("/v1/usage").json()["spent"]
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["uma"]), deadline=15)
            receiver.wait_for(1, timeout=10)
            wait_state(uma, rid, "COMPLETED", timeout=5)
            time.sleep(0.5)
            usage = uma.get("/v1/usage").json()
            bodies = _bodies(receiver)
            tally.record(
                "transient fal errors",
                results_lost=int(read.kinds[-1:] != ["completed"]) + int(not bodies or bodies[0]["status"] != "OK"),
                double_deliveries=max(0, len(bodies) - 1) + max(0, read.kinds.count("completed") - 1),
                wrong_refunds=int(usage["spent"] != spent),
                undocumented_5xx=tally.undocumented_5xx([read.status]),
            )
            assert read.kinds[-1:] == ["completed"] and "error" not in read.kinds, read.kinds
            assert len(bodies) == 1 and bodies[0]["status"] == "OK"
            assert usage["spent"] == spent and usage["inflight"] == 0
    finally:
        gateway.stop()
