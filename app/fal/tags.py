"""`X-Fal-Tags` on every spending call: the caller id as a tag, so fal's own usage reports split by caller.

fal's rules (docs, 2026): `k=v,k2=v2`, at most 10 pairs, keys `[a-z0-9._-]`, at most 1 KB in all, the
`fal.` prefix reserved. The emulator enforces the same rules (app/emulator/routes_queue.py), both from
`check`.

A caller's own tags are merged, not replaced: a frontend tagging its jobs by feature or project gets
that split in fal's reports too. The `falgate-` keys are ours: a caller sending one is refused rather
than silently overridden, so nobody can attribute a job to another caller, and a caller's tags never
push ours out (they get what is left of the 10 pairs and the 1 KB).
"""

from __future__ import annotations

import hashlib
import re

HEADER = "x-fal-tags"
CALLER_KEY = "falgate-caller"
MAX_PAIRS = 10
MAX_BYTES = 1024
_OURS = "falgate-"
_KEY = re.compile(r"[a-z0-9._-]{1,64}")
# Values kept verbatim: plain, header-safe, never a separator. Anything else is hashed.
_VALUE = re.compile(r"[A-Za-z0-9._:@+/-]{1,64}")
_HASHED = "sha256-"


class InvalidTags(ValueError):
    """A tags header fal would refuse; the message says which rule it breaks."""


def caller_value(caller_id: str) -> str:
    """The caller id as a tag value: itself when it fits, else a sha256 prefix (stable, so reports group)."""
    if _VALUE.fullmatch(caller_id) and not caller_id.startswith(_HASHED):
        # An id that looks like a hash is hashed too, so no caller can pose as another's hashed id.
        return caller_id
    return _HASHED + hashlib.sha256(caller_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def parse(raw: str) -> list[tuple[str, str]]:
    """The pairs of a header value, checked against fal's rules; raises InvalidTags."""
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise InvalidTags(f"at most {MAX_BYTES} bytes in all")
    pairs: list[tuple[str, str]] = []
    for item in raw.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not value or "=" in value:
            raise InvalidTags(f"{item.strip()!r} is not key=value")
        if not _KEY.fullmatch(key):
            raise InvalidTags(f"key {key!r} must match [a-z0-9._-]")
        if key.startswith("fal."):
            raise InvalidTags(f"key {key!r}: the fal. prefix is reserved")
        pairs.append((key, value))
    if len(pairs) > MAX_PAIRS:
        raise InvalidTags(f"at most {MAX_PAIRS} tags")
    return pairs


def for_caller(caller_id: str, own: str | None) -> str:
    """The header to send: our caller tag first, then the caller's own (checked; ours may not be in it)."""
    pairs = [(CALLER_KEY, caller_value(caller_id))]
    if own is not None and own.strip():
        theirs = parse(own)
        for key, _ in theirs:
            if key.startswith(_OURS):
                raise InvalidTags(f"key {key!r}: the {_OURS} prefix is the gateway's")
        pairs += theirs
    header = ",".join(f"{key}={value}" for key, value in pairs)
    parse(header)  # with ours added, the whole must still fit fal's limits
    return header
