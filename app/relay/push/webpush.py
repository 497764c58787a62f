"""Web Push (RFC 8030) with VAPID (RFC 8292) and the payload encrypted per RFC 8291 (aes128gcm).

The endpoint is a URL the browser chose, so it is sent to like a client webhook: through the SSRF-safe
transport of app/net/safe_transport.py (private and loopback addresses refused unless
FALGATE_WEBHOOK_ALLOW_PRIVATE), no proxy, no redirects followed, no cookies.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import http_ece
import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from app.net.safe_transport import AddressRefused, PublicOnlyTransport
from app.relay.client_webhooks import TargetRefused, validate_target_url
from app.relay.push import vapid
from app.relay.push.result import PushResult, from_status, timed, transport_failure

_TTL_SECONDS = 86400


def encrypt(payload: bytes, p256dh: str, auth: str) -> bytes:
    """RFC 8291: a fresh sender key and salt per message; http_ece writes the aes128gcm header."""
    sender_key = ec.generate_private_key(ec.SECP256R1())
    return http_ece.encrypt(
        payload,
        salt=os.urandom(16),
        private_key=sender_key,
        dh=vapid.b64url_decode(p256dh),
        auth_secret=vapid.b64url_decode(auth),
        version="aes128gcm",
    )


class WebPushSender:
    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str, *, allow_private: bool) -> None:
        self._key = private_key
        self._subject = subject
        self._allow_private = allow_private
        transport = httpx.AsyncHTTPTransport(trust_env=False) if allow_private else PublicOnlyTransport()
        self._http = httpx.AsyncClient(transport=transport, trust_env=False, follow_redirects=False, timeout=10.0)

    async def send(self, subscription_json: str, note: dict[str, Any]) -> PushResult:
        started = time.monotonic()
        subscription = json.loads(subscription_json)
        endpoint = subscription["endpoint"]
        try:
            validate_target_url(endpoint, allow_private=self._allow_private)
            target = httpx.URL(endpoint)
            body = encrypt(json.dumps(note).encode(), subscription["keys"]["p256dh"], subscription["keys"]["auth"])
            audience = f"{target.scheme}://{target.netloc.decode()}"
            headers = {
                "authorization": vapid.authorization(self._key, audience, self._subject),
                "content-encoding": "aes128gcm",
                "content-type": "application/octet-stream",
                "ttl": str(_TTL_SECONDS),
                "urgency": "high",
            }
            response = await self._http.post(target, content=body, headers=headers)
        except (TargetRefused, AddressRefused) as exc:
            return timed(PushResult(False, None, f"target_refused: {exc.reason}", permanent=True), started)
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return timed(transport_failure(exc), started)
        if 300 <= response.status_code < 400:
            return timed(PushResult(False, response.status_code, "redirect_not_followed", permanent=True), started)
        return timed(from_status(response, dead=response.status_code in (404, 410)), started)

    async def aclose(self) -> None:
        await self._http.aclose()
