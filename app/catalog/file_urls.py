"""Which hosts a file URL in a model input may name: fal fetches it with our account, so not our networks.

Only what the URL's text shows can be judged here (fal resolves the name, not us): userinfo, literal
private/loopback/link-local/metadata addresses in any spelling an HTTP client may accept (IPv4 in hex,
octal, decimal or short forms, IPv6 with an embedded IPv4 address), `localhost` and metadata names. The
upstream's own hosts (the emulator, in tests and demos) are always allowed: their file URLs are ones fal
storage handed out. `FALGATE_ALLOW_PRIVATE_FILE_URLS` lifts the rest for local development.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from app.net.safe_transport import literal_refusal

_DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_OCTET = re.compile(r"^(0|[1-9][0-9]{0,2})$")
_LOCAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "instance-data"})


@dataclass(frozen=True, slots=True)
class FileUrlPolicy:
    allow_private: bool = False
    # (host, port) pairs always allowed: the upstream's own hosts.
    trusted: frozenset[tuple[str, int]] = frozenset()

    @classmethod
    def for_upstream(cls, upstream_urls: Iterable[str], *, allow_private: bool) -> FileUrlPolicy:
        trusted = {origin for url in upstream_urls if (origin := _origin(urlsplit(url))) is not None}
        return cls(allow_private=allow_private, trusted=frozenset(trusted))


def file_url_refusal(parts: SplitResult, policy: FileUrlPolicy) -> str | None:
    """Why fal must not be sent to fetch this (already well-formed) http(s) URL, or None."""
    if policy.allow_private:
        return None
    if "@" in parts.netloc:
        return "credentials (user@host) are not allowed in file URLs"
    origin = _origin(parts)
    if origin is None:
        return "the host is not a valid name"
    if origin in policy.trusted:
        return None
    host = origin[0]
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return "the host is a local name"
    return _numeric_refusal(host) if ":" not in host else literal_refusal(host)


def _origin(parts: SplitResult) -> tuple[str, int] | None:
    raw = parts.hostname
    if not raw:
        return None
    # NFKC as IDNA does ("１２７.0.0.1" is 127.0.0.1 to an HTTP client); a trailing dot names the same host.
    host = unicodedata.normalize("NFKC", raw).lower().rstrip(".")
    if not host or "%" in host or any(ch.isspace() for ch in host):
        return None  # percent-escapes and IPv6 zone ids have no place in a public file URL
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return None
    return host, port


def _numeric_refusal(host: str) -> str | None:
    labels = host.split(".")
    if not all(_NUMERIC_LABEL.match(label) for label in labels):
        return None  # a name: fal resolves it
    if len(labels) == 4 and all(_CANONICAL_OCTET.match(label) and int(label) <= 255 for label in labels):
        return literal_refusal(host)
    # "0x7f.1", "2130706433", "0177.0.0.1": what inet_aton makes of these is an address, often a local one.
    return "the host is an IP address in a non-canonical form"
