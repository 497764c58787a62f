"""The TLS trust push services are reached with: the system's CAs plus FALGATE_PUSH_CA_FILE."""

from __future__ import annotations

import ssl


def push_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context
