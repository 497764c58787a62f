"""`FALGATE_AUTH=api_key`: the table of callers' keys, parsed once at startup, held as digests only.

`FALGATE_API_KEYS` is a comma-separated list of `caller_id:key` or `caller_id:sha256:<hex>` entries.
Plain keys are hashed as they are read, so the process keeps no key that would authenticate if memory
or a debug dump leaked. A caller id may appear in several entries: that is how a key is rotated (old
and new both valid until callers switch). The same key under two entries is refused, since it would
make the caller ambiguous.

Startup errors name entries by position, never by content: a malformed entry may be key material.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.callers.bearer import B64TOKEN
from app.callers.keys import CALLER_ID_RULE, SHA256_PREFIX, is_valid_caller_id, key_digest

MIN_PLAIN_KEY_LENGTH = 16
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class _Entry:
    caller_id: str
    digest: bytes


class ApiKeyTable:
    def __init__(self, entries: Sequence[_Entry]) -> None:
        self._entries = tuple(entries)

    @classmethod
    def parse(cls, raw: str) -> ApiKeyTable:
        """Parse FALGATE_API_KEYS; a ValueError names the bad entry's position, never its text."""
        pieces = [piece.strip() for piece in raw.split(",")]
        entries: list[_Entry] = []
        seen: dict[bytes, int] = {}
        for number, piece in enumerate(pieces, start=1):
            if not piece:
                continue  # tolerate "a:k1,,b:k2" and a trailing comma
            entry = _parse_entry(piece, number)
            if entry.digest in seen:
                raise ValueError(f"FALGATE_API_KEYS entries {seen[entry.digest]} and {number} have the same key")
            seen[entry.digest] = number
            entries.append(entry)
        if not entries:
            raise ValueError("FALGATE_API_KEYS has no entries (create one with: falgate keys new CALLER_ID)")
        return cls(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> str | None:
        """The caller id owning `key`, or None.

        Every configured digest is compared, with no early exit, so the time taken says nothing about
        which entry (or whether any) matched. Comparing digests rather than keys also means a timing
        difference could at most reveal bits of a SHA-256, not of a key.
        """
        presented = key_digest(key)
        found: str | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry.caller_id
        return found


def _parse_entry(piece: str, number: int) -> _Entry:
    where = f"FALGATE_API_KEYS entry {number}"
    caller_id, colon, secret = piece.partition(":")
    caller_id, secret = caller_id.strip(), secret.strip()
    if not colon:
        raise ValueError(f"{where} is not caller_id:key or caller_id:sha256:<hex> (no ':' found)")
    if not is_valid_caller_id(caller_id):
        raise ValueError(f"{where}: the caller id must be {CALLER_ID_RULE}")
    if secret.startswith(SHA256_PREFIX):
        hex_digest = secret[len(SHA256_PREFIX) :].strip()
        if _HEX_DIGEST.fullmatch(hex_digest) is None:
            raise ValueError(f"{where}: 'sha256:' must be followed by exactly 64 hex digits")
        return _Entry(caller_id, bytes.fromhex(hex_digest))
    if len(secret) < MIN_PLAIN_KEY_LENGTH:
        raise ValueError(
            f"{where}: a plain key must be at least {MIN_PLAIN_KEY_LENGTH} characters "
            "(generate one with: falgate keys new CALLER_ID)"
        )
    if B64TOKEN.fullmatch(secret) is None:  # callers send keys as bearer tokens: nothing else could match
        raise ValueError(f"{where}: a key may contain only letters, digits and - . _ ~ + / (then optional '=')")
    return _Entry(caller_id, key_digest(secret))
