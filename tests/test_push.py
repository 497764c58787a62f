"""Push notifications end to end: real gateways, the emulator, and stand-ins of FCM, APNs and Web Push
(tests/push_standins.py) that verify credentials, tokens and payloads as the real services do."""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis

from app.relay.push.vapid import new_key_pem
from tests.push_standins import ApnsStandin, FcmStandin, Tally, WebPushStandin
from tests.redis_server import redis_url
from tests.relay_helpers import KLING, KLING_BODY, auth_env, bearer, caller_keys, submit
from tests.servers import Server, start_emulator, start_gateway

SUBJECT = "mailto:ops@falgate.test"
REDIS_URL = redis_url(10)  # a db of its own, flushed by the test that uses it


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=0.5)
    yield server
    server.stop()


@dataclass
class Standins:
    fcm: FcmStandin
    apns: ApnsStandin
    web: WebPushStandin
    vapid_pem: str
    credentials: str
    device_tokens: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, fail_first: int = 0) -> Standins:
        fcm = FcmStandin(Tally(fail_first))
        apns = ApnsStandin(Tally(fail_first))
        web = WebPushStandin(Tally(fail_first), SUBJECT)
        return cls(fcm, apns, web, new_key_pem()[0], fcm.write_credentials())

    def env(self, keys: dict[str, str], retry_scale: float = 0.02, **extra: str) -> dict[str, str]:
        return {
            **auth_env(keys),
            "FALGATE_WEBHOOK_ALLOW_PRIVATE": "true",  # the Web Push stand-in is on 127.0.0.1
            "FALGATE_WEBHOOK_RETRY_SCALE": str(retry_scale),
            "FALGATE_FCM_CREDENTIALS": self.credentials,
            "FALGATE_FCM_URL": self.fcm.url,
            "FALGATE_APNS_URL": self.apns.url,
            "FALGATE_APNS_KEY_FILE": self.apns.key_file,
            "FALGATE_APNS_KEY_ID": self.apns.key_id,
            "FALGATE_APNS_TEAM_ID": self.apns.team_id,
            "FALGATE_APNS_TOPIC": self.apns.topic,
            "FALGATE_PUSH_CA_FILE": self.apns.ca_file,
            "FALGATE_VAPID_PRIVATE_KEY": self.vapid_pem,
            "FALGATE_VAPID_SUBJECT": SUBJECT,
            **extra,
        }

    @property
    def tallies(self) -> dict[str, Tally]:
        return {"fcm": self.fcm.tally, "apns": self.apns.tally, "webpush": self.web.tally}

    def close(self) -> None:
        self.fcm.close()
        self.apns.close()
        self.web.close()


@pytest.fixture
def standins() -> Iterator[Standins]:
    started = Standins.start(fail_first=2)
    yield started
    started.close()


def _client(gateway: Server, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers=bearer(key), timeout=30)


def _register_all(client: httpx.Client, standins: Standins) -> dict[str, str]:
    """One device of each kind; returns {platform: device id} and teaches the Web Push stand-in the key."""
    key = client.get("/v1/push/vapid-public-key")
    assert key.status_code == 200, key.text
    standins.web.vapid_public_key = key.json()["public_key"]
    bodies = {
        "fcm": {"platform": "fcm", "token": "fcm-" + secrets.token_urlsafe(40), "label": "Pixel"},
        "apns": {"platform": "apns", "token": secrets.token_hex(32), "label": "iPhone"},
        "webpush": {"platform": "webpush", "subscription": standins.web.browser().subscription()},
    }
    standins.device_tokens = [bodies["fcm"]["token"], bodies["apns"]["token"], *bodies["webpush"]["subscription"]["keys"].values()]
    ids = {}
    for platform, body in bodies.items():
        answer = client.post("/v1/devices", json=body)
        assert answer.status_code == 201, answer.text
        device = answer.json()
        assert set(device) == {"id", "platform", "label", "created_at"} and device["platform"] == platform
        assert body.get("token", "~") not in answer.text
        ids[platform] = device["id"]
    return ids


def _push_deliveries(client: httpx.Client) -> list[dict]:
    answer = client.get("/v1/webhooks/deliveries")
    assert answer.status_code == 200, answer.text
    return [d for d in answer.json()["deliveries"] if d["url"].startswith("push:")]


def _secrets_of(standins: Standins) -> list[str]:
    """Push credentials and device tokens: none may appear in a log line or an answer."""
    lines = [line for line in standins.vapid_pem.splitlines() + standins.fcm.private_key_pem.splitlines() if "-----" not in line]
    with open(standins.apns.key_file) as f:
        lines += [line for line in f.read().splitlines() if "-----" not in line]
    return lines + sorted(standins.fcm.issued) + standins.device_tokens


def test_each_device_gets_exactly_one_notification_after_two_failures(emulator: Server, standins: Standins) -> None:
    keys = caller_keys("alice")
    # Debug logging: the canary check below covers everything the gateway and its libraries can print.
    gateway = start_gateway(emulator, **standins.env(keys, FALGATE_LOG_LEVEL="debug"))
    try:
        with _client(gateway, keys["alice"]) as alice:
            ids = _register_all(alice, standins)
            rid = submit(alice)
            for tally in standins.tallies.values():
                tally.wait_accepted(1, timeout=30)
            time.sleep(1.5)  # a duplicate would come within a retry gap
            for name, tally in standins.tallies.items():
                assert len(tally.accepted) == 1, name
                assert [s for _, s in tally.attempts] == [503, 503, 200], (name, tally.attempts, tally.refusals)
            # Web Push and FCM said Retry-After: 1; the retry waited that long, not the scaled 0.1 s.
            for name in ("webpush", "fcm"):
                at = [a for a, _ in standins.tallies[name].attempts]
                assert at[1] - at[0] >= 0.95 and at[2] - at[1] >= 0.95, (name, at)

            fcm = standins.fcm.tally.accepted[0]
            apns = standins.apns.tally.accepted[0]
            web = standins.web.tally.accepted[0]
            for data in (fcm["data"], apns, web["data"]):
                assert data["request_id"] == rid and data["status"] == "OK" and data["model_id"] == KLING
                assert data["video_url"].startswith("http")
            assert fcm["notification"]["title"] == f"{KLING}: ready" == web["title"] == apns["aps"]["alert"]["title"]

            listed = _push_deliveries(alice)
            assert sorted(d["url"] for d in listed) == sorted(f"push:{i}" for i in ids.values())
            assert all(d["state"] == "delivered" and d["attempts"] == 3 for d in listed), listed
            answers = alice.get("/v1/devices").text + alice.get("/v1/webhooks/deliveries").text
        leaked = [s for s in _secrets_of(standins) if s in gateway.output or s in answers]
        assert not leaked, "a push credential was logged or answered"
    finally:
        gateway.stop()


def test_a_gateway_restart_between_completion_and_delivery_loses_nothing(emulator: Server) -> None:
    standins = Standins.start(fail_first=1)
    keys = caller_keys("erin")
    # Scale 0.5: the retry is due 2.5-3.75 s after the failed attempt, after the restart.
    env = standins.env(keys, retry_scale=0.5, FALGATE_STORE_URL=f"sqlite:///{tempfile.mkdtemp()}/falgate.db")
    first = start_gateway(emulator, **env)
    second: Server | None = None
    try:
        with _client(first, keys["erin"]) as erin:
            _register_all(erin, standins)
            submit(erin)
            for tally in standins.tallies.values():
                tally.wait_attempts(1, timeout=30)
        first.stop()
        stopped_at = time.time()
        assert all(not t.accepted for t in standins.tallies.values()), "delivered before the restart"
        second = start_gateway(emulator, **env)
        for name, tally in standins.tallies.items():
            tally.wait_accepted(1, timeout=30)
            assert tally.attempts[-1][0] > stopped_at, name
        time.sleep(1.0)
        assert all(len(t.accepted) == 1 and len(t.attempts) == 2 for t in standins.tallies.values())
    finally:
        first.stop()
        if second is not None:
            second.stop()
        standins.close()


def test_a_dead_token_removes_its_device(emulator: Server) -> None:
    standins = Standins.start()
    keys = caller_keys("dora")
    gateway = start_gateway(emulator, **standins.env(keys))
    try:
        with _client(gateway, keys["dora"]) as dora:
            ids = _register_all(dora, standins)
            devices = {d["id"]: d for d in dora.get("/v1/devices").json()["devices"]}
            assert set(devices) == set(ids.values())
            # Every token is now reported dead by its service.
            standins.fcm.tally.answer = _always_dead(standins.fcm.tally)  # type: ignore[method-assign]
            standins.apns.tally.answer = _always_dead(standins.apns.tally)  # type: ignore[method-assign]
            standins.web.tally.answer = _always_dead(standins.web.tally)  # type: ignore[method-assign]
            submit(dora)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and dora.get("/v1/devices").json()["devices"]:
                time.sleep(0.1)
            assert dora.get("/v1/devices").json()["devices"] == []
            listed = _push_deliveries(dora)
            assert len(listed) == 3 and all(d["state"] == "failed" and d["attempts"] == 1 for d in listed), listed
            assert all("token_dead" in d["last_error"] for d in listed)
    finally:
        gateway.stop()
        standins.close()


def _always_dead(tally: Tally):  # noqa: ANN202
    def answer(token: str) -> int:
        with tally.lock:
            tally.attempts.append((time.time(), 410))
        return 410

    return answer


def test_devices_belong_to_their_caller(emulator: Server) -> None:
    standins = Standins.start()
    keys = caller_keys("alice", "bob")
    gateway = start_gateway(emulator, **standins.env(keys, FALGATE_MAX_DEVICES_PER_CALLER="3"))
    try:
        with _client(gateway, keys["alice"]) as alice, _client(gateway, keys["bob"]) as bob:
            ids = _register_all(alice, standins)
            assert bob.get("/v1/devices").json() == {"devices": []}
            for device_id in ids.values():
                assert bob.delete(f"/v1/devices/{device_id}").status_code == 404
            # Bob's finished job notifies nobody: his caller has no devices, and Alice's are not his.
            submit(bob)
            time.sleep(2.0)
            assert all(not t.attempts for t in standins.tallies.values())
            assert _push_deliveries(bob) == []
            # ...nor can he target one of hers: to him it is an unknown device.
            answer = bob.post(f"/{KLING}", json=KLING_BODY, params={"push_device": ids["fcm"]})
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["query", "push_device"]
            assert alice.post(f"/{KLING}", json=KLING_BODY, params={"push": "maybe"}).status_code == 422
            # Alice's ?push=0 notifies nobody; ?push_device=ID only that device.
            for params in ({"push": "0"}, {"push_device": ids["apns"]}):
                assert alice.post(f"/{KLING}", json=KLING_BODY, params=params).status_code == 200
            standins.apns.tally.wait_accepted(1)
            time.sleep(2.0)
            assert len(standins.apns.tally.accepted) == 1
            assert not standins.fcm.tally.attempts and not standins.web.tally.attempts
            # A token registered twice is one device; a fourth device is over the cap.
            token = {"platform": "fcm", "token": "fcm-again-" + secrets.token_hex(8)}
            assert alice.post("/v1/devices", json=token).status_code == 429
            again = alice.delete(f"/v1/devices/{ids['fcm']}")
            assert again.status_code == 204 and alice.delete(f"/v1/devices/{ids['fcm']}").status_code == 404
            first = alice.post("/v1/devices", json=token)
            second = alice.post("/v1/devices", json=token)
            assert first.status_code == 201 and second.status_code == 200 and first.json() == second.json()
            assert len(alice.get("/v1/devices").json()["devices"]) == 3
            # Bad input: clear 4xx with a detail.
            for body, status in (
                ({"platform": "sms", "token": "x"}, 422),
                ({"platform": "fcm"}, 400),
                ({"platform": "webpush", "subscription": {"endpoint": "https://x.test/p", "keys": {"p256dh": "AA", "auth": "AA"}}}, 422),
                ({"platform": "apns", "token": "bad token with spaces"}, 422),
            ):
                answer = alice.post("/v1/devices", json=body)
                assert answer.status_code == status and answer.json()["detail"], (body, answer.text)
    finally:
        gateway.stop()
        standins.close()


def test_no_vapid_key_means_no_webpush(emulator: Server) -> None:
    keys = caller_keys("zoe")
    gateway = start_gateway(emulator, **auth_env(keys))
    try:
        with _client(gateway, keys["zoe"]) as zoe:
            assert zoe.get("/v1/push/vapid-public-key").status_code == 404
            answer = zoe.post("/v1/devices", json={"platform": "fcm", "token": "abc"})
            assert answer.status_code == 400 and "not configured" in answer.json()["detail"]
    finally:
        gateway.stop()


def test_a_private_web_push_endpoint_is_refused(emulator: Server) -> None:
    """Without FALGATE_WEBHOOK_ALLOW_PRIVATE an endpoint is held to the client-webhook rules."""
    keys = caller_keys("pat")
    pem, public_key = new_key_pem()
    gateway = start_gateway(emulator, **auth_env(keys), FALGATE_VAPID_PRIVATE_KEY=pem, FALGATE_VAPID_SUBJECT=SUBJECT)
    web = WebPushStandin(Tally(), SUBJECT)
    try:
        with _client(gateway, keys["pat"]) as pat:
            assert pat.get("/v1/push/vapid-public-key").json() == {"public_key": public_key}
            for endpoint in (web.browser().endpoint, "https://169.254.169.254/push", "http://push.example.com/x"):
                subscription = {**web.browser().subscription(), "endpoint": endpoint}
                answer = pat.post("/v1/devices", json={"platform": "webpush", "subscription": subscription})
                assert answer.status_code == 400 and "refused" in answer.json()["detail"], answer.text
            assert pat.get("/v1/devices").json() == {"devices": []}
        assert pem.splitlines()[1] not in gateway.output
    finally:
        gateway.stop()
        web.close()


def test_two_replicas_on_one_redis_push_once_per_device(emulator: Server) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()
    standins = Standins.start(fail_first=1)
    keys = caller_keys("rita")
    env = standins.env(keys, FALGATE_STORE_URL=REDIS_URL)
    replicas = [start_gateway(emulator, **env), start_gateway(emulator, **env)]
    try:
        with _client(replicas[0], keys["rita"]) as rita:
            _register_all(rita, standins)
            submit(rita)
            for tally in standins.tallies.values():
                tally.wait_accepted(1, timeout=30)
            time.sleep(1.5)
        assert all(len(t.accepted) == 1 and len(t.attempts) == 2 for t in standins.tallies.values())
        with _client(replicas[1], keys["rita"]) as rita:
            assert len(rita.get("/v1/devices").json()["devices"]) == 3
            assert [d["state"] for d in _push_deliveries(rita)] == ["delivered"] * 3
    finally:
        for replica in replicas:
            replica.stop()
        standins.close()
