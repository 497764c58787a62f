"""fal's webhooks into the gateway (verified) and the caller's webhooks out of it (Standard Webhooks).

Over real HTTP: a JWKS server of our own lets the test sign deliveries as fal would; a receiver on
127.0.0.1 plays the caller's server; gateways are real processes, restarted on the same store file.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.emulator.signing import WebhookSigner
from app.relay.client_webhooks import new_secret
from tests.conftest import Upstream
from tests.relay_helpers import (
    KLING,
    KLING_BODY,
    FakeQueue,
    FalSender,
    JwksServer,
    Receiver,
    auth_env,
    bearer,
    caller_keys,
    fal_webhook_body,
    metric,
    read_sse,
    request_state,
    submit,
    wait_state,
    webhook_env,
)
from tests.servers import Server, start_emulator, start_gateway


@pytest.fixture(scope="module")
def signer() -> WebhookSigner:
    return WebhookSigner()


@pytest.fixture(scope="module")
def jwks(signer: WebhookSigner) -> Iterator[JwksServer]:
    server = JwksServer(signer)
    yield server
    server.close()


@pytest.fixture(scope="module")
def long_emulator() -> Iterator[Server]:
    """Jobs that outlast the test: the emulator's own webhook (signed with ITS key) never finishes them first."""
    server = start_emulator(job_seconds=30.0)
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def client_for(gateway: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=bearer(key), timeout=30)


def deliveries(client: httpx.Client) -> list[dict]:
    answer = client.get("/v1/webhooks/deliveries")
    assert answer.status_code == 200, answer.text
    return answer.json()["deliveries"]


def verify_standard(secret: str, received) -> dict:
    """The standardwebhooks package's own check of one delivery; returns the parsed body."""
    headers = {k: v for k, v in received.headers.items() if k.startswith("webhook-")}
    return Webhook(secret).verify(received.body, headers)


def has_completed_event(gateway: Server, key: str, request_id: str, wait: float = 0.8) -> bool:
    read = read_sse(gateway.url, f"/v1/requests/{request_id}/events", headers=bearer(key), deadline=wait)
    assert read.status == 200
    return any(e.event in ("completed", "error") for e in read.events)


def test_bad_fal_deliveries_are_refused_and_a_duplicate_is_relayed_once(
    long_emulator: Server, jwks: JwksServer, signer: WebhookSigner, receiver: Receiver
) -> None:
    keys = caller_keys("alice", "bob")
    secret = new_secret()
    gateway = start_gateway(long_emulator, FALGATE_FAL_JWKS_URL=jwks.jwks_url, **auth_env(keys), **webhook_env(secret))
    fal = FalSender(signer)
    try:
        alice = client_for(gateway, keys["alice"])
        rid = submit(alice, fal_webhook=receiver.hook_url)
        # fal is told to call the gateway, never the caller's own server.
        submits = [r for r in Upstream(long_emulator).requests() if r["method"] == "POST" and r["path"].startswith("/queue/")]
        query = httpx.QueryParams(submits[-1]["query"])
        assert query["fal_webhook"] == f"{gateway.url}/v1/fal/webhook"
        assert receiver.url not in submits[-1]["query"]

        body = fal_webhook_body(rid)
        valid = fal.headers(rid, body)
        other_key = FalSender(WebhookSigner())
        bad = {
            "forged signature": (body, {**valid, "X-Fal-Webhook-Signature": os.urandom(64).hex()}, "bad_signature"),
            "wrong key": (body, other_key.headers(rid, body), "bad_signature"),
            "altered body": (body.replace(b"out.mp4", b"evil.mp4"), valid, "bad_signature"),
            "altered user id header": (body, {**valid, "X-Fal-Webhook-User-Id": "someone-else"}, "bad_signature"),
            "stale timestamp": (body, fal.headers(rid, body, now=time.time() - 400), "stale_timestamp"),
            "future timestamp": (body, fal.headers(rid, body, now=time.time() + 400), "stale_timestamp"),
            "no signature": (body, {"Content-Type": "application/json"}, "missing_headers"),
        }
        for name, (content, headers, reason) in bad.items():
            answer = fal.post(gateway, content, headers)
            assert answer.status_code == 401, (name, answer.status_code, answer.text)
            assert answer.json().get("reason") == reason, (name, answer.json())
        # Validly signed, but for another request than the body names: refused too.
        mismatched = fal_webhook_body(str(uuid.uuid4()))
        assert fal.post(gateway, mismatched, fal.headers(rid, mismatched)).status_code == 400

        # ... and nothing changed.
        assert request_state(alice, rid) in ("IN_QUEUE", "IN_PROGRESS")
        assert deliveries(alice) == []
        assert not has_completed_event(gateway, keys["alice"], rid)
        assert alice.get(f"/fal-ai/kling-video/requests/{rid}/status").json()["status"] != "COMPLETED"
        assert metric(gateway, "falgate_webhook_verifications_total", outcome="accepted") == 0
        assert metric(gateway, "falgate_webhook_verifications_total", outcome="bad_signature") == 4
        assert metric(gateway, "falgate_webhook_verifications_total", outcome="stale_timestamp") == 2
        assert receiver.received == []

        assert alice.get("/v1/usage").json()["inflight"] == 1, "the slot is still held"

        # The valid delivery, five times at once (fal retries; a proxy may repeat): one is the completion.
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda _: fal.post(gateway, body, valid), range(5)))
        assert [a.status_code for a in answers] == [200] * 5, [a.text for a in answers]
        assert sorted(a.json()["duplicate"] for a in answers) == [False, True, True, True, True]
        # Then a retry re-signed later, with a different payload: the first completion stored wins.
        changed = fal_webhook_body(rid, video_url="https://v3.fal.media/files/relay/second.mp4")
        late = fal.post(gateway, changed, fal.headers(rid, changed, now=time.time() + 5))
        assert late.status_code == 200 and late.json()["duplicate"] is True

        [got] = receiver.wait_for(1)
        time.sleep(2.5)  # the outbox wakes at least every second: a second delivery would be here by now
        assert len(receiver.received) == 1, f"{len(receiver.received)} client deliveries for one completion"
        assert got.path == "/hook"
        assert got.headers["content-type"] == "application/json"
        sent = verify_standard(secret, got)
        assert sent == {
            "request_id": rid,
            "gateway_request_id": rid,
            "status": "OK",
            "payload": json.loads(body)["payload"],
            "error": None,
        }
        with pytest.raises(WebhookVerificationError):
            Webhook(new_secret()).verify(got.body, {k: v for k, v in got.headers.items() if k.startswith("webhook-")})

        wait_state(alice, rid, "COMPLETED", timeout=5)
        [delivery] = deliveries(alice)
        assert delivery["state"] == "delivered" and delivery["attempts"] == 1
        assert delivery["request_id"] == rid and delivery["url"] == receiver.hook_url
        assert delivery["delivery_id"] == got.headers["webhook-id"]
        read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["alice"]), deadline=5)
        assert read.closed and read.kinds.count("completed") == 1
        assert read.of("completed")[0].data["payload"]["video"]["url"] == "https://v3.fal.media/files/relay/out.mp4"
        assert metric(gateway, "falgate_webhook_verifications_total", outcome="accepted") == 1
        assert metric(gateway, "falgate_webhook_verifications_total", outcome="duplicate") == 5
        assert alice.get("/v1/usage").json()["inflight"] == 0, "the slot was freed once"

        bob = client_for(gateway, keys["bob"])
        assert deliveries(bob) == []
        assert bob.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/redeliver").status_code == 404
    finally:
        gateway.stop()


def test_failing_receiver_gets_the_delivery_on_a_later_attempt_and_redelivery(emulator: Server) -> None:
    keys = caller_keys("carol", "dave")
    secret = new_secret()
    receiver = Receiver(fail_first=3)
    gateway = start_gateway(emulator, **auth_env(keys), **webhook_env(secret, retry_scale=0.02))
    try:
        carol = client_for(gateway, keys["carol"])
        started = time.monotonic()
        rid = submit(carol, fal_webhook=receiver.hook_url)
        got = receiver.wait_for(4, timeout=20)
        print(f"\n4 attempts (3 x 500, then 200) within {time.monotonic() - started:.2f}s of the submit")
        assert receiver.answers[:4] == [500, 500, 500, 200]
        ids = {r.headers["webhook-id"] for r in got}
        assert len(ids) == 1, "webhook-id is stable across retries"
        for attempt in got:  # each attempt is signed afresh, and every signature is valid
            assert verify_standard(secret, attempt)["request_id"] == rid
        assert verify_standard(secret, got[3])["payload"]["video"]["url"] == f"{emulator.url}/files/sample.mp4"

        [delivery] = deliveries(carol)
        assert delivery["state"] == "delivered" and delivery["attempts"] == 4, delivery
        assert [h["status_code"] for h in delivery["history"]] == [500, 500, 500, 200]
        assert delivery["last_status"] == 200 and delivery["delivered_at"] is not None
        assert request_state(carol, rid) == "COMPLETED"
        time.sleep(1.5)
        assert len(receiver.received) == 4, "nothing is sent again once delivered"

        # Redeliver on request: sent again, same webhook-id, newly signed.
        dave = client_for(gateway, keys["dave"])
        assert dave.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/redeliver").status_code == 404
        assert carol.post("/v1/webhooks/deliveries/" + uuid.uuid4().hex + "/redeliver").status_code == 404
        assert len(receiver.received) == 4
        answer = carol.post(f"/v1/webhooks/deliveries/{delivery['delivery_id']}/redeliver")
        assert answer.status_code == 200, answer.text
        again = receiver.wait_for(5, timeout=10)[4]
        assert again.headers["webhook-id"] == delivery["delivery_id"]
        assert again.body == got[3].body
        assert verify_standard(secret, again)["request_id"] == rid
        deadline = time.monotonic() + 5
        while deliveries(carol)[0]["attempts"] != 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = deliveries(carol)[0]
        assert after["attempts"] == 5 and after["state"] == "delivered", after
        time.sleep(1.5)
        assert len(receiver.received) == 5
    finally:
        gateway.stop()
        receiver.close()


def test_a_gateway_restart_between_attempts_loses_nothing(emulator: Server) -> None:
    keys = caller_keys("erin")
    secret = new_secret()
    store = f"sqlite:///{tempfile.mkdtemp()}/falgate.db"
    receiver = Receiver(fail_first=1)
    # Scale 0.5: the first retry is due 2.5-3.75 s after the failed attempt, time enough to restart.
    env = {"FALGATE_STORE_URL": store, **auth_env(keys), **webhook_env(secret, retry_scale=0.5)}
    first = start_gateway(emulator, **env)
    second: Server | None = None
    try:
        with client_for(first, keys["erin"]) as erin:
            rid = submit(erin, fal_webhook=receiver.hook_url)
            receiver.wait_for(1, timeout=15)
            [pending] = deliveries(erin)
        assert pending["state"] == "pending" and pending["attempts"] == 1 and pending["last_status"] == 500
        first.stop()
        stopped_at = time.time()
        assert len(receiver.received) == 1, "no attempt was due at shutdown"
        second = start_gateway(emulator, **env)
        print(f"\nrestart took {time.time() - stopped_at:.2f}s; retry was due at {pending['next_attempt_at'] - stopped_at:+.2f}s")
        got = receiver.wait_for(2, timeout=15)
        assert got[1].at > stopped_at, "the retry came from the new process"
        assert receiver.answers[:2] == [500, 200]
        assert got[1].headers["webhook-id"] == got[0].headers["webhook-id"] == pending["delivery_id"]
        assert verify_standard(secret, got[1])["request_id"] == rid
        with client_for(second, keys["erin"]) as erin:
            [delivery] = deliveries(erin)
            assert delivery["state"] == "delivered" and delivery["attempts"] == 2
            assert [h["status_code"] for h in delivery["history"]] == [500, 200]
            assert request_state(erin, rid) == "COMPLETED"
    finally:
        first.stop()
        if second is not None:
            second.stop()
        receiver.close()


def test_private_targets_and_missing_secret_are_refused_at_submit(emulator: Server, gateway: Server) -> None:
    keys = caller_keys("frank")
    receiver = Receiver()
    upstream = Upstream(emulator)
    public_only = start_gateway(emulator, **auth_env(keys), **webhook_env(allow_private=False))
    try:
        with client_for(public_only, keys["frank"]) as frank:
            upstream.clear()
            for target in (receiver.hook_url, "https://127.0.0.1/hook", "https://localhost/hook", "https://10.0.0.8/hook"):
                answer = frank.post(f"/{KLING}", json=KLING_BODY, params={"fal_webhook": target})
                assert answer.status_code == 422, (target, answer.text)
                [error] = answer.json()["detail"]
                assert error["loc"] == ["query", "fal_webhook"], error
            assert upstream.requests() == [], "a refused submit never reaches fal"
            assert deliveries(frank) == [] and frank.get("/v1/requests").json()["requests"] == []
        # The default test gateway has no FALGATE_WEBHOOK_SECRET: client webhooks are off there.
        answer = httpx.post(f"{gateway.url}/{KLING}", json=KLING_BODY, params={"fal_webhook": "https://example.com/hook"})
        assert answer.status_code == 400, answer.text
        assert "FALGATE_WEBHOOK_SECRET" in answer.json()["detail"]
        assert upstream.requests() == []
        assert receiver.received == []
    finally:
        public_only.stop()
        receiver.close()


def test_fal_webhook_arriving_before_the_submit_answer(
    emulator: Server, jwks: JwksServer, signer: WebhookSigner, receiver: Receiver
) -> None:
    keys = caller_keys("grace")
    secret = new_secret()
    rid = str(uuid.uuid4())
    queue = FakeQueue(lambda: rid)
    gateway = start_gateway(
        emulator,
        FALGATE_FAL_QUEUE_URL=queue.url,
        FALGATE_FAL_JWKS_URL=jwks.jwks_url,
        **auth_env(keys),
        **webhook_env(secret),
    )
    fal = FalSender(signer)
    try:
        body = fal_webhook_body(rid)
        # Before the submit is recorded the request is not ours (yet): nothing is kept, fal retries.
        early = fal.post(gateway, body, fal.headers(rid, body))
        assert early.status_code == 503 and early.headers["retry-after"], early.text
        with client_for(gateway, keys["grace"]) as grace:
            assert submit(grace, fal_webhook=receiver.hook_url) == rid
            retry = fal.post(gateway, body, fal.headers(rid, body))
            assert retry.status_code == 200 and retry.json() == {"ok": True, "duplicate": False}, retry.text
            assert httpx.QueryParams(queue.submits[0].path.partition("?")[2])["fal_webhook"] == f"{gateway.url}/v1/fal/webhook"
            [got] = receiver.wait_for(1, timeout=10)
            assert verify_standard(secret, got)["payload"] == json.loads(body)["payload"]
            wait_state(grace, rid, "COMPLETED", timeout=5)
            [delivery] = deliveries(grace)
            assert delivery["state"] == "delivered" and delivery["request_id"] == rid
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["grace"]), deadline=5)
            assert read.closed and read.kinds == ["completed"]
            assert grace.get("/v1/usage").json()["inflight"] == 0, "the slot was freed"
        time.sleep(1.5)
        assert len(receiver.received) == 1
    finally:
        gateway.stop()
        queue.close()


def test_a_failed_job_is_an_error_event_a_refund_and_an_error_webhook(emulator: Server, receiver: Receiver) -> None:
    keys = caller_keys("heidi")
    secret = new_secret()
    gateway = start_gateway(emulator, FALGATE_BUDGET_PER_DAY="10", **auth_env(keys), **webhook_env(secret))
    try:
        with client_for(gateway, keys["heidi"]) as heidi:
            rid = submit(heidi, fal_webhook=receiver.hook_url, body={**KLING_BODY, "prompt": "a cat [fail]"})
            assert heidi.get("/v1/usage").json()["spent"] == 0.25
            [got] = receiver.wait_for(1, timeout=15)
            sent = verify_standard(secret, got)
            assert sent["request_id"] == rid and sent["status"] == "ERROR" and sent["error"], sent
            wait_state(heidi, rid, "FAILED", timeout=5)
            usage = heidi.get("/v1/usage").json()
            assert usage["spent"] == 0 and usage["inflight"] == 0, usage
            # Browsers use ?access_token= (EventSource cannot set headers).
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", params={"access_token": keys["heidi"]}, deadline=5)
            assert read.status == 200 and read.closed and read.kinds == ["error"], read.kinds
            assert read.events[0].data["status"] == "ERROR" and read.events[0].data["error"]
    finally:
        gateway.stop()
