"""fal's webhook receiver under hostile and untimely deliveries; the client receiver down, then up.

Correctly signed webhooks from another fal account, or for request ids this gateway never submitted,
change nothing and keep nothing. Duplicated and early webhooks from the emulator are relayed once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.emulator.signing import WebhookSigner
from app.relay.client_webhooks import new_secret
from tests.faults.emulator_controls import FalControls
from tests.faults.tally import Tally
from tests.relay_helpers import (
    FakeQueue,
    FalSender,
    JwksServer,
    Receiver,
    auth_env,
    bearer,
    caller_keys,
    fal_webhook_body,
    read_sse,
    request_state,
    submit,
    wait_state,
    webhook_env,
)
from tests.servers import Server, start_emulator, start_gateway


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(
        job_seconds=0.5, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05", FALGATE_EMULATOR_WEBHOOK_RETRY_DELAY="0.3"
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signer() -> WebhookSigner:
    return WebhookSigner()


@pytest.fixture(scope="module")
def jwks(signer: WebhookSigner) -> Iterator[JwksServer]:
    server = JwksServer(signer)
    yield server
    server.close()


class _Ids:
    def __init__(self) -> None:
        self.next = str(uuid.uuid4())

    def __call__(self) -> str:
        return self.next


@pytest.mark.parametrize("configured", [False, True], ids=["learned", "configured"])
def test_webhooks_of_another_fal_account_or_an_unknown_request_keep_nothing(
    emulator: Server, jwks: JwksServer, signer: WebhookSigner, receiver: Receiver, tally: Tally, configured: bool
) -> None:
    keys = caller_keys("lee")
    ids = _Ids()
    queue = FakeQueue(ids)
    account = {"FALGATE_FAL_USER_ID": "our-account"} if configured else {}
    gateway = start_gateway(
        emulator, FALGATE_FAL_QUEUE_URL=queue.url, FALGATE_FAL_JWKS_URL=jwks.jwks_url,
        **account, **auth_env(keys), **webhook_env(new_secret()),
    )
    ours, theirs = FalSender(signer, user_id="our-account"), FalSender(signer, user_id="another-account")
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["lee"]), timeout=30) as lee:
            # A request id never submitted here, correctly signed: refused, and nothing is kept for it...
            stranger = ids.next
            body = fal_webhook_body(stranger)
            answer = theirs.post(gateway, body, theirs.headers(stranger, body))
            assert answer.status_code in (401, 503), answer.text
            # ... so when that id is later submitted here, it is not completed by the stranger's webhook.
            assert submit(lee, fal_webhook=receiver.hook_url) == stranger
            time.sleep(0.5)
            assert request_state(lee, stranger) == "IN_QUEUE"
            if not configured:
                ours.post(gateway, body, ours.headers(stranger, body)).raise_for_status()  # teaches our account
                receiver.wait_for(1)
            # A submitted request, signed for another account: refused, nothing changes.
            ids.next = mine = str(uuid.uuid4())
            assert submit(lee, fal_webhook=receiver.hook_url) == mine
            body = fal_webhook_body(mine)
            foreign = theirs.post(gateway, body, theirs.headers(mine, body))
            assert foreign.status_code == 401 and foreign.json()["reason"] == "foreign_account", foreign.text
            time.sleep(0.3)
            assert request_state(lee, mine) == "IN_QUEUE"
            # Our own account's webhook completes it.
            assert ours.post(gateway, body, ours.headers(mine, body)).status_code == 200
            wait_state(lee, mine, "COMPLETED", timeout=5)
            time.sleep(0.5)
            wrong = sum(1 for r in receiver.received if json.loads(r.body)["request_id"] == stranger and configured)
            tally.record("hostile webhooks", double_deliveries=max(0, len(receiver.received) - (1 if configured else 2)),
                         results_lost=wrong)
            assert len(receiver.received) == (1 if configured else 2)
    finally:
        gateway.stop()
        queue.close()


@pytest.mark.parametrize("action", ["duplicate", "early"])
def test_duplicated_and_early_webhooks_are_relayed_once(
    emulator: Server, fal: FalControls, receiver: Receiver, tally: Tally, action: str
) -> None:
    keys = caller_keys("mo")
    gateway = start_gateway(emulator, FALGATE_BUDGET_PER_DAY="10", **auth_env(keys), **webhook_env(new_secret()))
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["mo"]), timeout=30) as mo:
            fal.webhook_rule(action, copies=3)
            rid = submit(mo, fal_webhook=receiver.hook_url)
            spent = mo.get("/v1/usage").json()["spent"]
            receiver.wait_for(1, timeout=10)
            wait_state(mo, rid, "COMPLETED", timeout=10)
            time.sleep(1.5)
            sent = [w for w in fal.webhooks(rid) if w["status_code"] == 200]
            assert len(sent) >= (3 if action == "duplicate" else 1), fal.webhooks(rid)
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["mo"]), deadline=5)
            usage = mo.get("/v1/usage").json()
            bodies = [json.loads(r.body) for r in receiver.received]
            tally.record(
                "duplicated webhooks" if action == "duplicate" else "early webhooks",
                results_lost=int(not bodies or bodies[0]["status"] != "OK"),
                double_deliveries=max(0, len(bodies) - 1),
                wrong_refunds=int(usage["spent"] != spent),
            )
            assert len(bodies) == 1 and bodies[0]["status"] == "OK"
            assert read.kinds == ["completed"] and usage["inflight"] == 0
    finally:
        gateway.stop()


def test_client_receiver_down_then_up_gets_the_result_once(emulator: Server, fal: FalControls, tally: Tally) -> None:
    keys = caller_keys("nia")
    receiver = Receiver(fail_first=3)  # down for the first three attempts
    gateway = start_gateway(emulator, **auth_env(keys), **webhook_env(new_secret(), retry_scale=0.001))
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["nia"]), timeout=30) as nia:
            submit(nia, fal_webhook=receiver.hook_url)
            receiver.wait_for(4, timeout=20)
            time.sleep(1.0)
            delivered = receiver.delivered
            tally.record("client receiver down", results_lost=int(not delivered),
                         double_deliveries=max(0, len(delivered) - 1))
            assert len(delivered) == 1
    finally:
        gateway.stop()
        receiver.close()
