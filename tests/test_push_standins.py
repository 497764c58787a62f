"""The stand-ins refuse what the real services refuse: otherwise tests/test_push.py would prove nothing.

Each is driven directly with httpx (no gateway): a grant signed by the wrong key, a provider token
from another key, HTTP/1.1 to APNs, a wrong topic, a VAPID JWT for another audience.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.relay.push.result import retry_after
from app.relay.push.vapid import authorization, new_key_pem, public_key_b64
from app.relay.push.webpush import encrypt
from tests.push_standins import FCM_SCOPE, GOOGLE_TOKEN_AUDIENCE, ApnsStandin, FcmStandin, Tally, WebPushStandin


@pytest.fixture(scope="module")
def apns() -> Iterator[ApnsStandin]:
    server = ApnsStandin(Tally())
    yield server
    server.close()


def _grant(key: object, standin: FcmStandin, **changes: object) -> dict:
    now = int(time.time())
    claims = {"iss": standin.client_email, "aud": GOOGLE_TOKEN_AUDIENCE, "scope": FCM_SCOPE, "iat": now, "exp": now + 3600}
    claims.update(changes)
    assertion = jwt.encode(claims, key, algorithm="RS256")
    return {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}


def test_fcm_standin_checks_the_grant_and_the_token() -> None:
    standin = FcmStandin(Tally())
    try:
        from cryptography.hazmat.primitives import serialization

        right = serialization.load_pem_private_key(standin.private_key_pem.encode(), password=None)
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for data in (_grant(other, standin), _grant(right, standin, scope="https://www.googleapis.com/auth/cloud-platform"),
                     _grant(right, standin, aud=standin.token_uri)):
            assert httpx.post(standin.token_uri, data=data).status_code == 400
        issued = httpx.post(standin.token_uri, data=_grant(right, standin))
        assert issued.status_code == 200
        send = f"{standin.url}/v1/projects/{standin.project}/messages:send"
        message = {"message": {"token": "t", "notification": {"title": "a", "body": "b"}, "data": {}}}
        assert httpx.post(send, json=message, headers={"authorization": "Bearer forged"}).status_code == 401
        token = issued.json()["access_token"]
        assert httpx.post(send, json=message, headers={"authorization": f"Bearer {token}"}).status_code == 200
    finally:
        standin.close()


def _provider_token(apns: ApnsStandin, key: object | None = None) -> str:
    if key is None:
        with open(apns.key_file) as f:
            key = f.read()
    return jwt.encode({"iss": apns.team_id, "iat": int(time.time())}, key, "ES256", {"kid": apns.key_id})


def test_apns_standin_wants_http2_tls_its_key_and_topic(apns: ApnsStandin) -> None:
    context = ssl.create_default_context(cafile=apns.ca_file)
    payload = {"aps": {"alert": {"title": "a", "body": "b"}}}

    def post(http2: bool, token: str, topic: str) -> int:
        with httpx.Client(http2=http2, verify=context) as client:
            headers = {"authorization": f"bearer {token}", "apns-topic": topic, "apns-push-type": "alert"}
            return client.post(f"{apns.url}/3/device/abc", json=payload, headers=headers).status_code

    good = _provider_token(apns)
    assert post(True, good, apns.topic) == 200
    assert post(False, good, apns.topic) != 200, "HTTP/1.1 is refused"
    assert post(True, good, "com.example.other") == 403
    assert post(True, _provider_token(apns, ec.generate_private_key(ec.SECP256R1())), apns.topic) == 403
    with pytest.raises(httpx.ConnectError):  # not trusted without the test CA
        httpx.Client(http2=True).post(f"{apns.url}/3/device/abc", json=payload)


def test_webpush_standin_decrypts_and_checks_vapid() -> None:
    standin = WebPushStandin(Tally(), "mailto:a@b.test")
    try:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(new_key_pem()[0].encode(), password=None)
        standin.vapid_public_key = public_key_b64(key)
        browser = standin.browser()
        keys = browser.subscription()["keys"]
        body = encrypt(json.dumps({"title": "hi"}).encode(), keys["p256dh"], keys["auth"])

        def post(auth: str, content: bytes = body) -> int:
            headers = {"authorization": auth, "content-encoding": "aes128gcm", "ttl": "60"}
            return httpx.post(browser.endpoint, content=content, headers=headers).status_code

        assert post(authorization(key, "https://elsewhere.test", "mailto:a@b.test")) == 403
        assert post(authorization(key, standin.url, "mailto:other@b.test")) == 403
        other = ec.generate_private_key(ec.SECP256R1())
        assert post(authorization(other, standin.url, "mailto:a@b.test")) == 403
        assert post(authorization(key, standin.url, "mailto:a@b.test"), body[:-1] + bytes([body[-1] ^ 1])) == 400
        assert post(authorization(key, standin.url, "mailto:a@b.test")) == 201
        assert standin.tally.accepted == [{"title": "hi"}]
    finally:
        standin.close()


def test_retry_after_reads_seconds_and_http_dates() -> None:
    def answer(value: str | None) -> httpx.Response:
        return httpx.Response(503, headers={"retry-after": value} if value else {})

    assert retry_after(answer("7")) == 7.0
    assert retry_after(answer(None)) is None and retry_after(answer("soon")) is None
    from email.utils import formatdate

    assert 25 <= retry_after(answer(formatdate(time.time() + 30, usegmt=True))) <= 31
    assert retry_after(answer("-5")) == 0.0
