"""Verification of fal's signed webhook deliveries (fal-protocol.md, "Webhooks (fal -> us)").

fal signs `request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" + hex(sha256(raw body))` with Ed25519 and
publishes its public keys as a JWKS. The key set is cached (`app.net.jwks.JWKSCache`) and refetched when a
signature matches none of the cached keys (fal may have rotated), but never more often than
`min_refetch_seconds`: every forged delivery is such a miss, and it must not turn us into a tool for
hammering fal's JWKS endpoint.

Receivers map `WebhookRejected.reason`: "no_keys" means *we* could not check the delivery (no key set
could be fetched and none is cached), so answer 503 and fal retries later; every other reason is the
sender's fault (401/400: the delivery is not from fal, or too old/new to trust).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.net.jwks import JWKSCache, KeySetUnavailable

_REQUEST_ID = "x-fal-webhook-request-id"
_USER_ID = "x-fal-webhook-user-id"
_TIMESTAMP = "x-fal-webhook-timestamp"
_SIGNATURE = "x-fal-webhook-signature"

MAX_KEYS = 20  # a JWKS listing more keys than this is cut: each miss costs one verify per key
_MAX_JWKS_BYTES = 256 * 1024
_HEX = frozenset(string.hexdigits)


class WebhookRejected(Exception):
    """A delivery we will not accept. `reason`: missing_headers | stale_timestamp | bad_signature | no_keys."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def retryable(self) -> bool:
        """True when the fault is ours (no key set): answer 503 so that fal delivers again later."""
        return self.reason == "no_keys"


@dataclass(frozen=True, slots=True)
class VerifiedDelivery:
    request_id: str
    user_id: str
    timestamp: int


class FalWebhookVerifier:
    """Checks fal's webhook signatures against fal's JWKS. One instance per process; coroutine-safe.

    All times (timestamp tolerance, cache age, refetch spacing) come from `clock`, so tests can move it.
    """

    def __init__(
        self,
        jwks_url: str,
        http: httpx.AsyncClient,
        *,
        tolerance_seconds: int = 300,
        cache_seconds: float = 86400,
        min_refetch_seconds: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tolerance = tolerance_seconds
        self._clock = clock
        self._jwks = JWKSCache(
            jwks_url,
            http,
            _parse_jwks,
            ttl=cache_seconds,
            cooldown=min_refetch_seconds,
            label="fal JWKS",
            max_bytes=_MAX_JWKS_BYTES,
            clock=clock,
        )

    async def verify(self, headers: Mapping[str, str], body: bytes) -> VerifiedDelivery:
        """Return who sent the delivery, or raise `WebhookRejected`. Never raises anything else for bad input.

        A reason of "no_keys" means the JWKS could not be fetched and nothing is cached: the receiver should
        answer 503 so that fal retries the delivery (it does, ~10 times over ~2 hours).
        """
        request_id, user_id, raw_timestamp, raw_signature = _signature_headers(headers)
        timestamp = int(raw_timestamp)
        # Checked before any crypto or network work: a replayed old delivery costs us nothing.
        if abs(self._clock() - timestamp) > self._tolerance:
            raise WebhookRejected("stale_timestamp")
        if len(raw_signature) != 128 or not _HEX.issuperset(raw_signature):
            # bytes.fromhex would also accept spaces; an exact 64-byte hex string is all fal sends.
            raise WebhookRejected("bad_signature")
        signature = bytes.fromhex(raw_signature)
        digest = hashlib.sha256(body).hexdigest()
        message = f"{request_id}\n{user_id}\n{raw_timestamp}\n{digest}".encode()
        delivery = VerifiedDelivery(request_id, user_id, timestamp)

        try:
            current = await self._jwks.current()
        except KeySetUnavailable:
            raise WebhookRejected("no_keys") from None
        # A stale set is still used when its refetch failed: fal's old keys beat refusing every delivery.
        if _matches(current.keys, signature, message):
            return delivery
        # No cached key matches: fal may have rotated. The cache decides whether a fetch is allowed now.
        try:
            newer = await self._jwks.refetch(current)
        except KeySetUnavailable:
            newer = None  # we hold a set, and the delivery matches none of it: the sender's fault
        if newer is not None and _matches(newer.keys, signature, message):
            return delivery
        raise WebhookRejected("bad_signature")


def _signature_headers(headers: Mapping[str, str]) -> tuple[str, str, str, str]:
    # Works for case-insensitive header objects and for plain dicts alike.
    lowered = {name.lower(): value for name, value in headers.items()}
    values = tuple(lowered.get(name, "") for name in (_REQUEST_ID, _USER_ID, _TIMESTAMP, _SIGNATURE))
    request_id, user_id, timestamp, signature = values
    if not all(values):
        raise WebhookRejected("missing_headers")
    # Plain unix seconds only: int() would also take "+1", " 1" or "1_0", which fal never sends.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise WebhookRejected("missing_headers")
    return request_id, user_id, timestamp, signature


def _matches(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
    for key in keys:
        try:
            key.verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def _parse_jwks(entries: list[object]) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 keys of a JWKS, deduplicated, at most MAX_KEYS; keys of other types are ignored.

    ValueError if there is none: the cache then keeps the set it has.
    """
    keys: dict[bytes, Ed25519PublicKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519":
            continue
        raw = _b64url(entry.get("x"))
        if raw is None or len(raw) != 32 or raw in keys:
            continue
        keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
        if len(keys) >= MAX_KEYS:
            break
    if not keys:
        raise ValueError("no usable Ed25519 key")
    return tuple(keys.values())


def _b64url(value: object) -> bytes | None:
    if not isinstance(value, str) or not value.isascii():
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


def public_jwk(key: Ed25519PublicKey) -> dict[str, str]:
    """The JWK form of a public key, as fal publishes it (used by tests and local tooling)."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
