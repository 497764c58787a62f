"""The image types the gateway accepts, and the one sniffer that proves a file is one of them.

Shared by `/v1/storage/upload` (the spooled file), the proxy's storage initiate (the declared type) and
the `data:` URIs of model inputs (the decoded bytes), so every way an image reaches fal obeys one rule.
"""

from __future__ import annotations

# The accepted image types and the extension a stored file gets for each.
ACCEPTED_TYPES: dict[str, str] = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
# How many leading bytes `sniff_image` needs to decide.
SNIFF_BYTES = 16


def sniff_image(head: bytes) -> str | None:
    """The image type the first bytes prove, or None.

    A four-entry table of fixed signatures rather than a detection library: only these types are
    accepted, so there is nothing else to recognize.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    # RIFF container, WEBP form, and a first chunk that is one of WebP's three bitstream kinds.
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and head[12:16] in (b"VP8 ", b"VP8L", b"VP8X"):
        return "image/webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None
