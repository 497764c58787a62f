"""fal webhook signature checks against a real JWKS server on 127.0.0.1 and against the real emulator."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.emulator.signing import WebhookSigner
from app.fal.signatures import MAX_KEYS, FalWebhookVerifier, VerifiedDelivery, WebhookRejected, public_jwk
from tests.relay_helpers import Receiver, ThreadServer
from tests.servers import CANARY_FAL_KEY, Server, free_port

BODY = b'{"request_id":"req-1","status":"OK","payload":{"video":{"url":"https://x/v.mp4"}}}'
USER = "user-42"


@dataclass
class JwksServer:
    """Serves `raw` if set, else `document`; `down` answers 503. Counts every fetch."""

    url: str
    document: dict[str, Any]
    raw: bytes | None = None
    fetches: int = 0
    down: bool = False
    delay: float = 0.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Fixture:
    jwks: JwksServer
    signer: WebhookSigner
    clock: Clock
    http: httpx.AsyncClient
    verifiers: list[FalWebhookVerifier] = field(default_factory=list)

    def verifier(self, **kwargs: Any) -> FalWebhookVerifier:
        return FalWebhookVerifier(self.jwks.url, self.http, clock=self.clock, **kwargs)

    def headers(self, body: bytes = BODY, signer: WebhookSigner | None = None, skew: float = 0.0) -> dict[str, str]:
        return (signer or self.signer).headers("req-1", USER, body, now=self.clock.now + skew)


def _serve_jwks(jwks: JwksServer) -> ThreadServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            jwks.fetches += 1
            time.sleep(jwks.delay)
            if jwks.down:
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            body = jwks.raw if jwks.raw is not None else json.dumps(jwks.document).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return ThreadServer(Handler)


@pytest_asyncio.fixture(loop_scope="function")
async def fx() -> AsyncIterator[Fixture]:
    signer = WebhookSigner()
    jwks = JwksServer("", signer.jwks())
    server = _serve_jwks(jwks)
    jwks.url = f"{server.url}/.well-known/jwks.json"
    try:
        async with httpx.AsyncClient() as http:
            yield Fixture(jwks, signer, Clock(), http)
    finally:
        server.close()


async def _reason(verifier: FalWebhookVerifier, headers: dict[str, str], body: bytes = BODY) -> str:
    with pytest.raises(WebhookRejected) as caught:
        await verifier.verify(headers, body)
    return caught.value.reason


async def test_valid_delivery_is_accepted(fx: Fixture) -> None:
    verifier = fx.verifier()
    headers = fx.headers()
    delivery = await verifier.verify(headers, BODY)
    assert delivery == VerifiedDelivery("req-1", USER, int(headers["X-Fal-Webhook-Timestamp"]))
    # Header names are matched case-insensitively, whatever mapping the receiver hands over.
    assert await verifier.verify({k.lower(): v for k, v in headers.items()}, BODY) == delivery
    assert await verifier.verify(httpx.Headers(headers), BODY) == delivery
    assert fx.jwks.fetches == 1  # cached


async def test_forged_wrong_key_and_altered_body_are_bad_signatures(fx: Fixture) -> None:
    verifier = fx.verifier()
    forged = {**fx.headers(), "X-Fal-Webhook-Signature": os.urandom(64).hex()}
    assert await _reason(verifier, forged) == "bad_signature"
    assert await _reason(verifier, fx.headers(signer=WebhookSigner())) == "bad_signature"
    assert await _reason(verifier, fx.headers(), BODY.replace(b"v.mp4", b"w.mp4")) == "bad_signature"
    for name, value in [("X-Fal-Webhook-Request-Id", "req-2"), ("X-Fal-Webhook-User-Id", "someone-else")]:
        assert await _reason(verifier, {**fx.headers(), name: value}) == "bad_signature"


@pytest.mark.parametrize("skew", [-301, 301, -3600, 10**9])
async def test_stale_or_future_timestamp_is_refused(fx: Fixture, skew: float) -> None:
    verifier = fx.verifier()
    assert await _reason(verifier, fx.headers(skew=skew)) == "stale_timestamp"
    assert fx.jwks.fetches == 0  # refused before any key lookup


async def test_timestamp_inside_tolerance_is_accepted(fx: Fixture) -> None:
    verifier = fx.verifier(tolerance_seconds=300)
    for skew in (-299, 299):
        await verifier.verify(fx.headers(skew=skew), BODY)


@pytest.mark.parametrize(
    "header",
    ["X-Fal-Webhook-Request-Id", "X-Fal-Webhook-User-Id", "X-Fal-Webhook-Timestamp", "X-Fal-Webhook-Signature"],
)
async def test_missing_headers(fx: Fixture, header: str) -> None:
    headers = fx.headers()
    assert await _reason(fx.verifier(), {k: v for k, v in headers.items() if k != header}) == "missing_headers"
    assert await _reason(fx.verifier(), {**headers, header: ""}) == "missing_headers"


@pytest.mark.parametrize("timestamp", ["soon", "+1700000000", " 1700000000", "1_700_000_000", "1e9", "٣٣٣", "9" * 40])
async def test_malformed_timestamp(fx: Fixture, timestamp: str) -> None:
    assert await _reason(fx.verifier(), {**fx.headers(), "X-Fal-Webhook-Timestamp": timestamp}) == "missing_headers"


@pytest.mark.parametrize("mangle", ["zz", "short", "spaces", "odd", "long", "unicode"])
async def test_garbage_signature_hex(fx: Fixture, mangle: str) -> None:
    good = fx.headers()["X-Fal-Webhook-Signature"]
    bad = {
        "zz": "zz" * 64,
        "short": good[:64],
        "spaces": good[:2] + " " + good[3:],
        "odd": good[:-1],
        "long": good + "00",
        "unicode": "٣" * 128,
    }[mangle]
    assert await _reason(fx.verifier(), {**fx.headers(), "X-Fal-Webhook-Signature": bad}) == "bad_signature"


async def test_other_key_types_are_ignored(fx: Fixture) -> None:
    keys = [
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": fx.signer.jwks()["keys"][0]["x"]},
        {"kty": "OKP", "crv": "Ed25519", "x": "not base64 !!"},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed25519"},
        "junk",
        *fx.signer.jwks()["keys"],
    ]
    fx.jwks.document = {"keys": keys}
    await fx.verifier().verify(fx.headers(), BODY)


async def test_key_count_is_bounded(fx: Fixture) -> None:
    others = [public_jwk(Ed25519PrivateKey.generate().public_key()) for _ in range(MAX_KEYS)]
    fx.jwks.document = {"keys": [*others, *fx.signer.jwks()["keys"]]}  # the real key is number MAX_KEYS + 1
    assert await _reason(fx.verifier(), fx.headers()) == "bad_signature"


async def test_key_rotation_is_picked_up_with_one_refetch(fx: Fixture) -> None:
    verifier = fx.verifier(min_refetch_seconds=10)
    await verifier.verify(fx.headers(), BODY)
    rotated = WebhookSigner()
    fx.jwks.document = rotated.jwks()
    fx.clock.now += 11
    delivery = await verifier.verify(fx.headers(signer=rotated), BODY)
    assert delivery.request_id == "req-1"
    assert fx.jwks.fetches == 2
    await verifier.verify(fx.headers(signer=rotated), BODY)
    assert fx.jwks.fetches == 2


async def test_flood_of_bad_signatures_fetches_the_jwks_at_most_once_per_interval(fx: Fixture) -> None:
    verifier = fx.verifier(min_refetch_seconds=10)
    fx.jwks.delay = 0.05  # keep the first fetch in flight while the rest of the flood arrives

    async def forged() -> str:
        return await _reason(verifier, {**fx.headers(), "X-Fal-Webhook-Signature": os.urandom(64).hex()})

    assert set(await asyncio.gather(*(forged() for _ in range(50)))) == {"bad_signature"}
    assert fx.jwks.fetches == 1  # empty cache: 50 concurrent misses, one fetch
    fx.clock.now += 11
    assert set(await asyncio.gather(*(forged() for _ in range(50)))) == {"bad_signature"}
    assert fx.jwks.fetches == 2  # one refetch for the whole flood once the interval has passed
    for _ in range(20):
        await forged()
    assert fx.jwks.fetches == 2
    await verifier.verify(fx.headers(), BODY)  # genuine deliveries are unaffected


async def test_concurrent_misses_share_one_fetch_even_without_a_rate_limit(fx: Fixture) -> None:
    verifier = fx.verifier(min_refetch_seconds=0)
    fx.jwks.delay = 0.05
    forged = {**fx.headers(), "X-Fal-Webhook-Signature": os.urandom(64).hex()}
    reasons = await asyncio.gather(*(_reason(verifier, forged) for _ in range(30)))
    assert set(reasons) == {"bad_signature"}
    # One fetch for the empty cache, one for the misses that followed it: waiters on the lock reuse both.
    assert fx.jwks.fetches == 2


async def test_jwks_down_with_empty_cache_is_no_keys(fx: Fixture) -> None:
    fx.jwks.down = True
    verifier = fx.verifier(min_refetch_seconds=10)
    with pytest.raises(WebhookRejected) as caught:
        await verifier.verify(fx.headers(), BODY)
    assert caught.value.reason == "no_keys" and caught.value.retryable
    assert await _reason(verifier, fx.headers()) == "no_keys"
    assert fx.jwks.fetches == 1  # failed fetches are rate-limited too
    fx.jwks.down = False
    fx.clock.now += 11
    await verifier.verify(fx.headers(), BODY)


async def test_unreachable_jwks_is_no_keys() -> None:
    async with httpx.AsyncClient() as http:
        verifier = FalWebhookVerifier(f"http://127.0.0.1:{free_port()}/jwks.json", http)
        headers = WebhookSigner().headers("req-1", USER, BODY)
        with pytest.raises(WebhookRejected, match="no_keys"):
            await verifier.verify(headers, BODY)


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe", b"[]", b'{"keys": "x"}', b'{"keys": []}', b" " * 300_000])
async def test_unusable_jwks_is_no_keys(fx: Fixture, raw: bytes) -> None:
    fx.jwks.raw = raw
    assert await _reason(fx.verifier(), fx.headers()) == "no_keys"


async def test_expired_cache_is_refreshed_and_kept_if_the_refresh_fails(fx: Fixture) -> None:
    verifier = fx.verifier(cache_seconds=60, min_refetch_seconds=10)
    await verifier.verify(fx.headers(), BODY)
    fx.clock.now += 61
    await verifier.verify(fx.headers(), BODY)
    assert fx.jwks.fetches == 2  # expired: refetched
    fx.jwks.down = True
    fx.clock.now += 61
    await verifier.verify(fx.headers(), BODY)  # fal's previous keys beat refusing everything
    assert fx.jwks.fetches == 3


async def test_real_emulator_webhook_verifies(emulator: Server) -> None:
    """Submit a job to the emulator with ?fal_webhook=, receive its signed delivery, verify it."""
    receiver = Receiver()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            submitted = await http.post(
                f"{emulator.url}/queue/fal-ai/wan-i2v",
                params={"fal_webhook": receiver.hook_url},
                headers={"Authorization": f"Key {CANARY_FAL_KEY}"},
                json={"prompt": "a cat surfing", "image_url": "https://example.com/cat.png"},
            )
            assert submitted.status_code == 200, submitted.text
            arrived = (await asyncio.to_thread(receiver.wait_for, 1, 15))[0]
            headers, body = arrived.headers, arrived.body
            verifier = FalWebhookVerifier(f"{emulator.url}/rest/.well-known/jwks.json", http)
            delivery = await verifier.verify(headers, body)
            assert delivery.request_id == submitted.json()["request_id"] == json.loads(body)["request_id"]
            assert abs(delivery.timestamp - time.time()) < 30
            assert await _reason(verifier, headers, body + b" ") == "bad_signature"
    finally:
        receiver.close()


async def test_clock_going_backwards_does_not_freeze_the_cache(fx: Fixture) -> None:
    verifier = fx.verifier(min_refetch_seconds=10)
    await verifier.verify(fx.headers(), BODY)
    fx.clock.now -= 3600
    await verifier.verify(fx.headers(), BODY)
    assert fx.jwks.fetches == 2
