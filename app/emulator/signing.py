"""Ed25519 webhook signatures exactly as fal makes them, and the JWKS that publishes the key."""

from __future__ import annotations

import base64
import hashlib
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def signed_message(request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes fal signs: ids, timestamp and the hex SHA-256 of the raw body, newline-separated."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{request_id}\n{user_id}\n{timestamp}\n{digest}".encode()


class WebhookSigner:
    """One keypair per emulator process, like a key rotation that happens at every start."""

    def __init__(self) -> None:
        self._private = Ed25519PrivateKey.generate()
        self.public_raw = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.kid = hashlib.sha256(self.public_raw).hexdigest()[:16]

    def jwks(self) -> dict:
        x = base64.urlsafe_b64encode(self.public_raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}

    def sign(self, request_id: str, user_id: str, timestamp: str, body: bytes) -> str:
        return self._private.sign(signed_message(request_id, user_id, timestamp, body)).hex()

    def headers(self, request_id: str, user_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
        timestamp = str(int(time.time() if now is None else now))
        return {
            "X-Fal-Webhook-Request-Id": request_id,
            "X-Fal-Webhook-User-Id": user_id,
            "X-Fal-Webhook-Timestamp": timestamp,
            "X-Fal-Webhook-Signature": self.sign(request_id, user_id, timestamp, body),
        }
