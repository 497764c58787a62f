"""`POST /v1/storage/upload`: real image bytes in, a fal storage URL out; everything else refused early.

Images are made at test time: PNG and GIF by hand, JPEG and WebP with Pillow's real encoders.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from app.fal.storage import SPOOL_PREFIX, safe_file_name, sniff_image
from tests.conftest import Upstream, leak_checked_client
from tests.servers import CANARY_FAL_KEY, Server, free_port, start_gateway

URL = "/v1/storage/upload"
DEFAULT_LIMIT = 8 * 1024 * 1024
SMALL_LIMIT = 100_000


# --- image bytes ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int = 4, height: int = 3, size: int | None = None) -> bytes:
    """A valid RGB PNG; with `size`, padded to exactly that many bytes by a private ancillary chunk."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    rows = b"".join(b"\x00" + bytes([10, 200, 30]) * width for _ in range(height))
    image = _png_chunk(b"IDAT", zlib.compress(rows))
    end = _png_chunk(b"IEND", b"")
    signature = b"\x89PNG\r\n\x1a\n"
    if size is None:
        return signature + header + image + end
    padding = size - len(signature + header + image + end) - 12
    assert padding >= 0
    return signature + header + _png_chunk(b"flGt", b"\x00" * padding) + image + end


def make_gif() -> bytes:
    """A 1x1 GIF89a, by hand: header, screen descriptor, 2-colour table, image, LZW data, trailer."""
    return (
        b"GIF89a\x01\x00\x01\x00\x80\x00\x00"
        + b"\xff\x00\x00\x00\x00\x00"
        + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"
        + b"\x02\x02\x44\x01\x00"
        + b"\x3b"
    )


def _pillow(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 16), (30, 120, 220)).save(out, fmt)
    return out.getvalue()


def make_jpeg() -> bytes:
    return _pillow("JPEG")


def make_webp() -> bytes:
    return _pillow("WEBP")


PDF_BYTES = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
TEXT_BYTES = b"just some text pretending to be a picture\n" * 20


# --- helpers -------------------------------------------------------------------------------------


def _upload(client: httpx.Client, data: bytes, name: str = "photo.png", declared: str = "image/png") -> httpx.Response:
    return client.post(URL, files={"file": (name, data, declared)})


def _storage_calls(upstream: Upstream) -> list[dict[str, Any]]:
    return [r for r in upstream.requests() if "/storage/" in r["path"]]


def _spooled(directory: Path) -> list[Path]:
    return sorted(directory.glob(SPOOL_PREFIX + "*"))


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _multipart(boundary: str = "testboundary7f3a") -> tuple[bytes, bytes, str]:
    """The opening and closing of a one-file multipart body, and its content type."""
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def small_gateway(emulator: Server, spool_dir: Path) -> Iterator[Server]:
    """A gateway with a 100 kB limit whose temp dir is ours, so leftovers can be counted."""
    server = start_gateway(emulator, FALGATE_MAX_IMAGE_BYTES=str(SMALL_LIMIT), TMPDIR=str(spool_dir))
    yield server
    server.stop()


@pytest.fixture
def small(small_gateway: Server, upstream: Upstream, spool_dir: Path) -> Iterator[httpx.Client]:
    upstream.clear_faults()
    with leak_checked_client(small_gateway.url) as client:
        yield client
    assert _wait_for(lambda: not _spooled(spool_dir)), f"temp files left behind: {_spooled(spool_dir)}"


class _FakeStorage:
    """fal's REST host and CDN in one: records every request so the signed PUT can be inspected."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.put_status = 200
        self.initiate_answer: tuple[int, bytes] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self._record()
                if fake.initiate_answer is not None:
                    self._answer(*fake.initiate_answer)
                    return
                name = orjson.loads(body)["file_name"]
                base = f"http://127.0.0.1:{fake.port}"
                self._answer(200, orjson.dumps({"upload_url": f"{base}/upload/sig?x=1", "file_url": f"{base}/f/{name}"}))

            def do_PUT(self) -> None:
                self._record()
                self._answer(fake.put_status, b"{}")

            def _record(self) -> bytes:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                fake.requests.append({"method": self.command, "path": self.path, "headers": headers, "body": body})
                return body

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def fake_storage() -> Iterator[_FakeStorage]:
    fake = _FakeStorage()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def fake_gateway(fake_storage: _FakeStorage) -> Iterator[Server]:
    server = start_gateway(None, FALGATE_UPSTREAM="live", FALGATE_FAL_REST_URL=f"http://127.0.0.1:{fake_storage.port}")
    yield server
    server.stop()


# --- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (make_png(), "image/png"),
        (make_jpeg(), "image/jpeg"),
        (make_webp(), "image/webp"),
        (make_gif(), "image/gif"),
        (PDF_BYTES, None),
        (TEXT_BYTES, None),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),  # a RIFF file that is not WebP
        (b"\x89PN", None),
        (b"", None),
    ],
)
def test_sniff_reads_the_type_from_the_bytes(data: bytes, expected: str | None) -> None:
    assert sniff_image(data[:16]) == expected


@pytest.mark.parametrize(
    ("declared", "content_type", "expected"),
    [
        ("photo.png", "image/png", "photo.png"),
        ("photo.png", "image/jpeg", "photo.jpg"),
        ("../../etc/passwd", "image/png", "passwd.png"),
        ("C:\\Users\\me\\My Photo (1)!.JPG", "image/jpeg", "My_Photo_1.jpg"),
        ("фото.webp", "image/webp", "image.webp"),
        ("", "image/gif", "image.gif"),
        (None, "image/png", "image.png"),
        (".hidden", "image/png", "hidden.png"),
        ("a" * 500 + ".png", "image/png", "a" * 64 + ".png"),
    ],
)
def test_file_names_are_sanitized(declared: str | None, content_type: str, expected: str) -> None:
    assert safe_file_name(declared, content_type) == expected


# --- over HTTP -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "content_type", "extension"),
    [
        (make_png, "image/png", "png"),
        (make_jpeg, "image/jpeg", "jpg"),
        (make_webp, "image/webp", "webp"),
        (make_gif, "image/gif", "gif"),
    ],
)
def test_image_is_stored_and_served_back(
    client: httpx.Client, upstream: Upstream, make: Any, content_type: str, extension: str
) -> None:
    data = make()
    upstream.clear()
    response = _upload(client, data, name=f"holiday.{extension}", declared=content_type)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content_type"] == content_type
    assert body["file_size"] == len(data)
    assert body["file_url"].endswith(f"/holiday.{extension}")

    served = httpx.get(body["file_url"])
    assert served.status_code == 200
    assert served.content == data
    assert served.headers["content-type"] == content_type

    [initiate] = _storage_calls(upstream)
    assert initiate["method"] == "POST"
    assert initiate["path"] == "/rest/storage/upload/initiate"
    assert initiate["query"] == "storage_type=fal-cdn-v3"
    assert initiate["headers"]["authorization"] == "Key <valid>"


def test_type_comes_from_the_bytes_not_the_declaration(client: httpx.Client) -> None:
    data = make_jpeg()
    response = _upload(client, data, name="looks-like.png", declared="image/png")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content_type"] == "image/jpeg"
    assert body["file_url"].endswith("/looks-like.jpg")
    assert httpx.get(body["file_url"]).headers["content-type"] == "image/jpeg"


@pytest.mark.parametrize("data", [TEXT_BYTES, PDF_BYTES], ids=["text", "pdf"])
def test_renamed_non_image_is_415_and_never_reaches_fal(client: httpx.Client, upstream: Upstream, data: bytes) -> None:
    upstream.clear()
    response = _upload(client, data, name="totally-an-image.png", declared="image/png")
    assert response.status_code == 415
    body = response.json()
    assert "PNG, JPEG, WebP or GIF" in body["detail"]
    assert body["accepted"] == ["image/png", "image/jpeg", "image/webp", "image/gif"]
    assert _storage_calls(upstream) == []


def test_oversized_file_at_the_default_limit_is_413(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = _upload(client, make_png(size=DEFAULT_LIMIT + 1))
    assert response.status_code == 413
    assert response.json() == {"detail": f"The image is larger than {DEFAULT_LIMIT} bytes", "limit": DEFAULT_LIMIT}
    assert _storage_calls(upstream) == []


def test_file_one_byte_over_a_small_limit_is_413(small: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = _upload(small, make_png(size=SMALL_LIMIT + 1))
    assert response.status_code == 413
    assert response.json()["limit"] == SMALL_LIMIT
    assert _storage_calls(upstream) == []


def test_file_exactly_at_the_limit_is_accepted(small: httpx.Client) -> None:
    data = make_png(size=SMALL_LIMIT)
    response = _upload(small, data)
    assert response.status_code == 200, response.text
    assert response.json()["file_size"] == SMALL_LIMIT
    assert httpx.get(response.json()["file_url"]).content == data


def test_declared_length_far_over_the_limit_is_refused_before_reading(small_gateway: Server, upstream: Upstream) -> None:
    # Only the headers are sent: the answer must come without the gateway waiting for the body.
    upstream.clear()
    head = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {50 * SMALL_LIMIT}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", small_gateway.port), timeout=5) as sock:
        sock.sendall(head)
        answer = sock.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 413")
    assert _storage_calls(upstream) == []


def test_chunked_oversized_body_is_counted_and_refused(small: httpx.Client, upstream: Upstream) -> None:
    # No Content-Length to check up front: the bytes are counted as they arrive.
    head, tail, content_type = _multipart()
    data = make_png(size=SMALL_LIMIT * 3)

    def body() -> Iterator[bytes]:
        yield head
        for start in range(0, len(data), 16_384):
            yield data[start : start + 16_384]
        yield tail

    upstream.clear()
    response = small.post(URL, content=body(), headers={"content-type": content_type})
    assert response.status_code == 413
    assert _storage_calls(upstream) == []


def test_file_is_spooled_to_disk_while_it_streams(small: httpx.Client, spool_dir: Path) -> None:
    head, tail, content_type = _multipart()
    data = make_png(size=SMALL_LIMIT)
    seen: list[list[Path]] = []

    def body() -> Iterator[bytes]:
        yield head + data[:40_000]
        # The gateway is now waiting for the rest: its spool file must exist in the temp dir.
        _wait_for(lambda: bool(_spooled(spool_dir)))
        seen.append(_spooled(spool_dir))
        yield data[40_000:] + tail

    response = small.post(URL, content=body(), headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert len(seen[0]) == 1


def test_missing_field_is_422(client: httpx.Client) -> None:
    response = client.post(URL, files={"image": ("a.png", make_png(), "image/png")})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert error["type"] == "missing"
    assert "'file'" in error["msg"]


def test_form_without_any_file_is_422(client: httpx.Client) -> None:
    response = client.post(URL, data={"note": "hello"}, files={"other": ("x", b"", "text/plain")})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_empty_file_is_422(client: httpx.Client) -> None:
    response = _upload(client, b"")
    assert response.status_code == 422
    assert response.json()["detail"] == [{"loc": ["body", "file"], "msg": "The file is empty", "type": "empty_file"}]


def test_two_files_are_422(client: httpx.Client) -> None:
    files = [("file", ("a.png", make_png(), "image/png")), ("file", ("b.gif", make_gif(), "image/gif"))]
    response = client.post(URL, files=files)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "too_many_files"


def test_not_multipart_is_415(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = client.post(URL, content=make_png(), headers={"content-type": "image/png"})
    assert response.status_code == 415
    assert response.json()["accepted"] == ["multipart/form-data"]
    assert _storage_calls(upstream) == []


def test_truncated_multipart_body_is_400(small: httpx.Client) -> None:
    head, _, content_type = _multipart()
    response = small.post(URL, content=head + make_png(), headers={"content-type": content_type})
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]


def test_client_that_goes_away_mid_upload_leaves_no_temp_file(small_gateway: Server, spool_dir: Path) -> None:
    head, _, content_type = _multipart()
    partial = head + make_png(size=SMALL_LIMIT)[:30_000]
    request = (
        f"POST {URL} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {SMALL_LIMIT + 1000}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", small_gateway.port), timeout=5) as sock:
        sock.sendall(request + partial)
        assert _wait_for(lambda: bool(_spooled(spool_dir))), "the upload was never spooled"
    assert _wait_for(lambda: not _spooled(spool_dir)), f"temp files left behind: {_spooled(spool_dir)}"


def test_upstream_refusing_initiate_is_502(small: httpx.Client, upstream: Upstream) -> None:
    upstream.fault(status=500, path_contains="/storage/upload/initiate")
    response = _upload(small, make_png())
    assert response.status_code == 502
    body = response.json()
    assert body["detail"] == "fal storage refused to start the upload (HTTP 500)"
    assert body["error_type"] == "upstream_storage_error"
    assert "Injected fault" not in response.text  # the upstream body is not relayed


def test_storage_refusing_the_put_is_502(small: httpx.Client, upstream: Upstream) -> None:
    upstream.fault(status=403, path_contains="/files/upload/", method="PUT")
    response = _upload(small, make_png())
    assert response.status_code == 502
    assert response.json()["detail"] == "fal storage refused the file (HTTP 403)"


def test_signed_put_carries_no_key_and_the_exact_bytes(fake_gateway: Server, fake_storage: _FakeStorage) -> None:
    data = make_webp()
    fake_storage.requests.clear()
    with leak_checked_client(fake_gateway.url) as client:
        response = _upload(client, data, name="w.png", declared="image/png")
    assert response.status_code == 200, response.text
    assert response.json()["file_url"] == f"http://127.0.0.1:{fake_storage.port}/f/w.webp"

    initiate, put = fake_storage.requests
    assert initiate["method"] == "POST"
    assert initiate["path"] == "/storage/upload/initiate?storage_type=fal-cdn-v3"
    assert initiate["headers"]["authorization"] == f"Key {CANARY_FAL_KEY}"
    assert orjson.loads(initiate["body"]) == {"content_type": "image/webp", "file_name": "w.webp"}

    assert put["method"] == "PUT"
    assert put["path"] == "/upload/sig?x=1"
    assert "authorization" not in put["headers"]
    assert all(CANARY_FAL_KEY.split(":")[1] not in value for value in put["headers"].values())
    assert put["headers"]["content-type"] == "image/webp"
    assert put["headers"]["content-length"] == str(len(data))
    assert "transfer-encoding" not in put["headers"]
    assert put["body"] == data


@pytest.mark.parametrize(
    "answer",
    [(200, b"not json"), (200, b'{"upload_url": "file:///etc/passwd", "file_url": "x"}'), (401, b'{"detail": "secret-ish"}')],
    ids=["not-json", "bad-urls", "refused"],
)
def test_unusable_initiate_answer_is_502_without_its_body(
    fake_gateway: Server, fake_storage: _FakeStorage, answer: tuple[int, bytes]
) -> None:
    fake_storage.initiate_answer = answer
    fake_storage.requests.clear()
    try:
        with leak_checked_client(fake_gateway.url) as client:
            response = _upload(client, make_png())
    finally:
        fake_storage.initiate_answer = None
    assert response.status_code == 502
    assert response.json()["error_type"] == "upstream_storage_error"
    assert "secret-ish" not in response.text and "passwd" not in response.text
    assert [r["method"] for r in fake_storage.requests] == ["POST"]  # no PUT followed
