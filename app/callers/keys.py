"""Callers' API keys: making a new one, and the pieces of the `FALGATE_API_KEYS` entry format.

An entry is `caller_id:key` or `caller_id:sha256:<hex>`. `falgate keys new CALLER_ID` prints the
digest form, so the plain key only ever exists on the caller's side: the gateway's environment holds
nothing that would authenticate if it leaked.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "fg_"  # recognisable in a secret scanner and in a caller's config; not checked on the way in
SHA256_PREFIX = "sha256:"
_KEY_BYTES = 32

# The caller id becomes a rate-limit key, a store key and a log field: keep it plain, no separators
# of the setting (`,` `:`), no whitespace, bounded.
_CALLER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
CALLER_ID_RULE = "1-128 characters: letters, digits and . _ @ - (starting with a letter or digit)"


def is_valid_caller_id(caller_id: str) -> bool:
    return _CALLER_ID.fullmatch(caller_id) is not None


def key_digest(key: str) -> bytes:
    """The SHA-256 of a key, as stored and compared: the gateway never keeps plain keys in memory."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_api_key(caller_id: str) -> tuple[str, str]:
    """A fresh random key for `caller_id`, and the `caller_id:sha256:<hex>` entry for FALGATE_API_KEYS."""
    if not is_valid_caller_id(caller_id):
        raise ValueError(f"invalid caller id {caller_id!r}: use {CALLER_ID_RULE}")
    key = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    return key, f"{caller_id}:{SHA256_PREFIX}{key_digest(key).hex()}"
