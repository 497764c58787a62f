"""VAPID (RFC 8292) keys: the gateway's P-256 key that Web Push services know its pushes by."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

_VAPID_LIFETIME = 12 * 3600  # push services refuse more than 24 h


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    """FALGATE_VAPID_PRIVATE_KEY: PEM text, or the path of a PEM file. Errors never quote the key."""
    text = value if "-----BEGIN" in value else Path(value).read_text()
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("FALGATE_VAPID_PRIVATE_KEY is not a PEM private key (or a path to one)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("FALGATE_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return key


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The browser's `applicationServerKey`: base64url of the uncompressed point."""
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url(raw)


def new_key_pem() -> tuple[str, str]:
    """A fresh key: (PEM private key, base64url public key), for `falgate push vapid-keys`."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode(), public_key_b64(key)


def authorization(key: ec.EllipticCurvePrivateKey, audience: str, subject: str) -> str:
    """The `Authorization: vapid t=..., k=...` header for a push service at `audience` (its origin)."""
    claims = {"aud": audience, "exp": int(time.time()) + _VAPID_LIFETIME, "sub": subject}
    token = jwt.encode(claims, key, algorithm="ES256")
    return f"vapid t={token}, k={public_key_b64(key)}"
