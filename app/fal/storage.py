"""Image uploads to fal storage for callers that cannot run fal's client: `POST /v1/storage/upload`.

The multipart body is parsed while it streams in. The one image in it (field `file`) goes straight to a
temp file on disk, counted and sniffed on the way, so the file is never held in memory and an oversized
or non-image upload is refused as soon as that is known. Then the two steps of `fal.storage.upload`:
initiate with the server key, and PUT the file from disk to the signed URL fal answered (without the key).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeGuard
from urllib.parse import urlsplit

import anyio
import orjson
from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from app.catalog.images import ACCEPTED_TYPES, SNIFF_BYTES, sniff_image
from app.catalog.validation import parse_body
from app.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType, UpstreamUnavailable
from app.fal.upstream import UpstreamClient
from app.pipeline.operations import FrontDoor, Operation, OpKind

log = logging.getLogger("falgate.uploads")

FILE_FIELD = "file"
SPOOL_PREFIX = "falgate-upload-"
# Room for the boundary lines and part headers around the file in a well-formed body.
MULTIPART_OVERHEAD = 16 * 1024
STORAGE_TYPE = "fal-cdn-v3"
# The storage kinds a caller may ask fal for: the one fal's clients use today.
STORAGE_TYPES = frozenset({STORAGE_TYPE})

_READ_CHUNK = 64 * 1024
_MAX_PARTS = 16
_MAX_STEM = 64
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


class UploadedImage(BaseModel):
    file_url: str
    content_type: str
    file_size: int


@dataclass(frozen=True, slots=True)
class SpooledImage:
    path: Path
    size: int
    content_type: str  # sniffed from the bytes, never the declared type
    file_name: str  # sanitized, with the extension of `content_type`


def safe_file_name(declared: str | None, content_type: str) -> str:
    """A name fit for a storage URL: base name only, safe characters, bounded, the extension of the real type."""
    # Leading dots would hide the file or leave no stem (".jpg"): a dotfile's name is what follows them.
    base = PurePosixPath((declared or "").replace("\\", "/")).name.lstrip(".")
    stem = base.rsplit(".", 1)[0] if "." in base else base
    stem = _UNSAFE_NAME_CHARS.sub("_", stem).strip("_-")[:_MAX_STEM].rstrip("_-")
    return f"{stem or 'image'}.{ACCEPTED_TYPES[content_type]}"


def unsupported_image() -> UnsupportedMediaType:
    return UnsupportedMediaType("The file is not a PNG, JPEG, WebP or GIF image", accepted=list(ACCEPTED_TYPES))


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The image is larger than {limit} bytes", limit=limit)


@asynccontextmanager
async def spool_image(request: Request, limit: int) -> AsyncIterator[SpooledImage]:
    """Stream the request's multipart `file` part to a temp file; the file is removed when the block exits."""
    boundary = _multipart_boundary(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large(limit)
    fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw:
            reader = _FilePartReader(boundary, limit)
            await reader.copy(request, anyio.wrap_file(raw))
        yield reader.result(path)
    finally:
        # Also on refusal, failure upstream, or a client that went away mid-body.
        path.unlink(missing_ok=True)


async def store_on_fal(upstream: UpstreamClient, image: SpooledImage) -> UploadedImage:
    """Initiate a storage upload with the server key, then PUT the spooled file to the signed URL."""
    upload_url, file_url = await _initiate(upstream, image)
    # The file is opened and closed here, in the request's task; the PUT only pulls chunks from it.
    async with await anyio.open_file(image.path, "rb") as source:
        response = await upstream.put_signed(upload_url, image.content_type, _FileChunks(source), image.size)
    if not response.is_success:
        raise _storage_error("fal storage refused the file", response.status_code)
    return UploadedImage(file_url=file_url, content_type=image.content_type, file_size=image.size)


def initiate_body(op: Operation, body: bytes) -> bytes:
    """The proxy's storage initiate, held to the upload route's policy: an accepted image type, a safe name.

    Answers the body to forward (rebuilt from the checked fields, nothing else), or InvalidInput. The file's
    bytes go from the caller straight to fal's signed URL, so the size cap cannot be applied here.
    """
    errors: list[dict[str, object]] = []
    if op.params.get("storage_type") not in STORAGE_TYPES:
        errors.append(_initiate_error("query", "storage_type", f"storage_type must be {STORAGE_TYPE!r}", "literal_error"))
    data = parse_body(body).payload  # strict, as for submits: a repeated key is refused, not last-wins
    if not isinstance(data, dict):
        raise InvalidInput([*errors, {"loc": ["body"], "msg": "Input should be a JSON object", "type": "dict_type"}])
    content_type = data.get("content_type")
    if content_type not in ACCEPTED_TYPES:
        msg = "content_type must be one of " + ", ".join(ACCEPTED_TYPES)
        errors.append(_initiate_error("body", "content_type", msg, "unsupported_media_type"))
    name = data.get("file_name")
    if name is not None and not isinstance(name, str):
        errors.append(_initiate_error("body", "file_name", "file_name must be a string", "string_type"))
    if errors:
        raise InvalidInput(errors)
    assert isinstance(content_type, str)
    return orjson.dumps({"content_type": content_type, "file_name": safe_file_name(name, content_type)})


def _initiate_error(where: str, field: str, msg: str, error_type: str) -> dict[str, object]:
    return {"loc": [where, field], "msg": msg, "type": error_type}


async def _initiate(upstream: UpstreamClient, image: SpooledImage) -> tuple[str, str]:
    op = Operation(OpKind.UPLOAD_INITIATE, FrontDoor.REST, params={"storage_type": STORAGE_TYPE})
    body = initiate_body(op, orjson.dumps({"content_type": image.content_type, "file_name": image.file_name}))
    response = await upstream.send(op, {}, body=body)
    if response.status_code != 200:
        raise _storage_error("fal storage refused to start the upload", response.status_code)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        data = None
    upload_url = data.get("upload_url") if isinstance(data, dict) else None
    file_url = data.get("file_url") if isinstance(data, dict) else None
    if not (_is_http_url(upload_url) and _is_http_url(file_url)):
        raise _storage_error("fal storage answered without usable upload URLs", response.status_code)
    return upload_url, file_url


def _storage_error(what: str, status: int) -> UpstreamUnavailable:
    # Only the status is passed on: an upstream body could quote a signed URL or account details.
    log.warning("%s: HTTP %s", what, status)
    return UpstreamUnavailable(f"{what} (HTTP {status})", error_type="upstream_storage_error")


def _is_http_url(value: object) -> TypeGuard[str]:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class _FileChunks:
    """An open file read in chunks, as a plain async iterator rather than an async generator.

    The HTTP client may stop pulling once it has `size` bytes and drop the iterator in another task: an
    async generator would then be finalized by the garbage collector outside the request, printing
    "async generator ignored GeneratorExit" and cancel-scope tracebacks. This holds no state to finalize.
    """

    def __init__(self, source: anyio.AsyncFile[bytes]) -> None:
        self._source = source

    def __aiter__(self) -> _FileChunks:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._source.read(_READ_CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _multipart_boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"Send the image as multipart/form-data in the field {FILE_FIELD!r}", accepted=["multipart/form-data"]
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("The multipart/form-data content type has no boundary")
    return boundary


def _file_error(msg: str, error_type: str) -> InvalidInput:
    return InvalidInput([{"loc": ["body", FILE_FIELD], "msg": msg, "type": error_type}])


class _FilePartReader:
    """Feeds the body to python-multipart and keeps the bytes of the `file` part, and nothing else.

    The parser's callbacks are synchronous: they queue the file's bytes, and `copy` writes them to disk
    after each network chunk, so memory holds at most one chunk of the file.
    """

    def __init__(self, boundary: bytes, limit: int) -> None:
        self._limit = limit
        self._parser = MultipartParser(boundary, self._callbacks())
        self._parts = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._in_file = False
        self._found = False
        self._file_done = False
        self._ended = False
        self._declared_name: str | None = None
        self._size = 0
        self._head = bytearray()
        self._content_type: str | None = None
        self._pending: list[bytes] = []

    async def copy(self, request: Request, sink: anyio.AsyncFile[bytes]) -> None:
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > self._limit + MULTIPART_OVERHEAD:
                    raise too_large(self._limit)
                self._parser.write(chunk)
                self._check_type()
                if self._pending:
                    await sink.write(b"".join(self._pending))
                    self._pending.clear()
        except ClientDisconnect:
            raise BadRequest("The upload was interrupted") from None
        except MultipartParseError:
            raise BadRequest("Malformed multipart/form-data body") from None
        if received == 0:
            raise _file_error(f"Field required: send the image in the multipart field {FILE_FIELD!r}", "missing")

    def result(self, path: Path) -> SpooledImage:
        if not self._ended:
            raise BadRequest("The multipart/form-data body ended before its closing boundary")
        if not self._found:
            raise _file_error(f"Field required: send the image in the multipart field {FILE_FIELD!r}", "missing")
        if self._size == 0:
            raise _file_error("The file is empty", "empty_file")
        assert self._content_type is not None  # set by _check_type once the part ended
        name = safe_file_name(self._declared_name, self._content_type)
        return SpooledImage(path=path, size=self._size, content_type=self._content_type, file_name=name)

    def _check_type(self) -> None:
        # Sniffed as soon as enough bytes arrived, so a non-image is refused before the rest is spooled.
        if self._content_type is not None or not self._head:
            return
        if len(self._head) >= SNIFF_BYTES or self._file_done:
            self._content_type = sniff_image(bytes(self._head))
            if self._content_type is None:
                raise unsupported_image()

    def _callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_end": self._on_end,
        }

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > _MAX_PARTS:
            raise BadRequest(f"Too many multipart fields (at most {_MAX_PARTS})")
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._in_file = options.get(b"name") == FILE_FIELD.encode()
        if not self._in_file:
            return  # other fields are read past and dropped
        if self._found:
            raise _file_error("Send exactly one file", "too_many_files")
        self._found = True
        filename = options.get(b"filename")
        self._declared_name = filename.decode("utf-8", "replace") if filename else None

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        chunk = data[start:end]
        self._size += len(chunk)
        if self._size > self._limit:
            raise too_large(self._limit)
        if len(self._head) < SNIFF_BYTES:
            self._head += chunk[: SNIFF_BYTES - len(self._head)]
        self._pending.append(chunk)

    def _on_part_end(self) -> None:
        if self._in_file:
            self._file_done = True
            self._in_file = False

    def _on_end(self) -> None:
        self._ended = True
