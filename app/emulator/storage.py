"""fal's CDN storage in memory: signed one-shot upload URLs and the files they receive."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import posixpath
import time
import uuid
from dataclasses import dataclass, field

SWEEP_INTERVAL = 60.0


@dataclass
class StoredFile:
    file_id: str
    file_name: str
    content_type: str
    data: bytes = b""
    created_at: float = field(default_factory=time.time)


@dataclass
class _PendingUpload:
    file_name: str
    content_type: str
    expires_at: float


class UploadRejected(Exception):
    """The upload token is malformed, forged, expired or already used (answered 403)."""


def clean_file_name(name: object) -> str:
    # Only a base name: the name ends up in a URL path and must not be able to climb out of it.
    text = posixpath.basename(str(name or "").replace("\\", "/")).strip()
    return text if text and text not in (".", "..") else "upload.bin"


class FileStore:
    def __init__(self, token_seconds: float, ttl: float) -> None:
        self._secret = os.urandom(32)
        self._token_seconds = token_seconds
        self._ttl = ttl
        self._pending: dict[str, _PendingUpload] = {}
        self._files: dict[str, StoredFile] = {}
        self._last_sweep = time.monotonic()

    def initiate(self, file_name: str, content_type: str) -> tuple[str, str, str]:
        """Reserve a file id; returns (file_id, clean file name, upload token)."""
        self._sweep()
        file_id = uuid.uuid4().hex
        name = clean_file_name(file_name)
        expires_at = time.time() + self._token_seconds
        self._pending[file_id] = _PendingUpload(name, content_type or "application/octet-stream", expires_at)
        return file_id, name, self._token(file_id, int(expires_at))

    def complete(self, token: str, data: bytes, content_type: str | None) -> StoredFile:
        file_id = self._verify(token)
        pending = self._pending.pop(file_id, None)
        if pending is None:
            raise UploadRejected("upload URL already used")
        stored = StoredFile(file_id, pending.file_name, content_type or pending.content_type, data)
        self._files[file_id] = stored
        return stored

    def get(self, file_id: str, file_name: str) -> StoredFile | None:
        stored = self._files.get(file_id)
        return stored if stored is not None and stored.file_name == file_name else None

    def _token(self, file_id: str, expires_at: int) -> str:
        payload = f"{file_id}.{expires_at}"
        return f"{payload}.{self._mac(payload)}"

    def _mac(self, payload: str) -> str:
        digest = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _verify(self, token: str) -> str:
        parts = token.split(".")
        if len(parts) != 3:
            raise UploadRejected("malformed upload URL")
        file_id, expires_at, mac = parts
        if not hmac.compare_digest(mac, self._mac(f"{file_id}.{expires_at}")):
            raise UploadRejected("bad upload URL signature")
        if not expires_at.isdigit() or int(expires_at) < time.time():
            raise UploadRejected("upload URL expired")
        return file_id

    def _sweep(self) -> None:
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = time.monotonic()
        now = time.time()
        for file_id in [k for k, p in self._pending.items() if p.expires_at < now]:
            del self._pending[file_id]
        for file_id in [k for k, f in self._files.items() if f.created_at < now - self._ttl]:
            del self._files[file_id]
