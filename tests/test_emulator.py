"""The fal emulator, run as a real process and spoken to over HTTP exactly as the gateway will."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from app.emulator import EmulatorConfig, create_emulator_app
from tests.servers import CANARY_FAL_KEY, Server, free_port, start_emulator

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
KLING_APP = "fal-ai/kling-video"
AUTH = {"Authorization": f"Key {CANARY_FAL_KEY}"}
JOB_SECONDS = 1.0
INPUT = {"prompt": "a cat surfing", "image_url": "https://example.com/cat.png"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(
        job_seconds=JOB_SECONDS,
        # Shorter than every state change (~75 ms apart) so the stream test sees pings between them.
        FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.04",
        FALGATE_EMULATOR_WEBHOOK_RETRIES="2",
        FALGATE_EMULATOR_WEBHOOK_RETRY_DELAY="0.1",
    )
    yield server
    server.stop()
    assert "Traceback" not in server.output, server.output


@pytest.fixture()
def client(emulator: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=10.0) as http:
        yield http
        http.delete("/_control/faults")


def _submit(client: httpx.Client, model: str = KLING, body: dict[str, Any] | None = None, **params: str) -> dict[str, Any]:
    response = client.post(f"/queue/{model}", json=INPUT if body is None else body, headers=AUTH, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_completed(client: httpx.Client, submitted: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(submitted["status_url"], headers=AUTH)
        if status.status_code == 200:
            return status.json()
        time.sleep(0.05)
    raise AssertionError("job did not complete")


# ---- auth and basics -------------------------------------------------------------------------


def test_healthz(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Key wrong"}, {"Authorization": f"Bearer {CANARY_FAL_KEY}"}, {"Authorization": CANARY_FAL_KEY}],
)
def test_every_fal_host_requires_the_exact_key(client: httpx.Client, headers: dict[str, str]) -> None:
    calls = [
        client.post(f"/queue/{KLING}", json=INPUT, headers=headers),
        client.get(f"/queue/{KLING_APP}/requests/x/status", headers=headers),
        client.post(f"/run/{KLING}", json=INPUT, headers=headers),
        client.post("/rest/storage/upload/initiate", json={"file_name": "a.png"}, headers=headers),
        client.post("/rest/tokens/", json={}, headers=headers),
    ]
    for response in calls:
        assert response.status_code == 401
        assert response.json() == {"detail": "Unauthorized"}


def test_submit_rejects_a_body_that_is_not_a_json_object(client: httpx.Client) -> None:
    for content in (b"[1, 2]", b"{not json", b""):
        response = client.post(f"/queue/{KLING}", content=content, headers=AUTH)
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], list)


# ---- queue: submit, status, stream, result, cancel --------------------------------------------


def test_submit_answers_like_fal(client: httpx.Client, emulator: Server) -> None:
    response = client.post(f"/queue/{KLING}", json=INPUT, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    request_id = body["request_id"]
    assert response.headers["x-fal-request-id"] == request_id
    assert body["status"] == "IN_QUEUE" and body["queue_position"] == 2
    base = f"{emulator.url}/queue/{KLING_APP}/requests/{request_id}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status"
    assert body["cancel_url"] == base + "/cancel"


def test_app_id_keeps_three_segments_for_workflows(client: httpx.Client) -> None:
    body = _submit(client, "workflows/someone/my-flow/extra")
    assert f"/queue/workflows/someone/my-flow/requests/{body['request_id']}" in body["response_url"]
    assert client.get(body["status_url"], headers=AUTH).status_code == 202


def test_status_moves_through_queue_progress_and_completion(client: httpx.Client) -> None:
    submitted = _submit(client)
    seen: list[tuple[int, dict[str, Any]]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = client.get(submitted["status_url"], params={"logs": "1"}, headers=AUTH)
        seen.append((response.status_code, response.json()))
        if response.status_code == 200:
            break
        time.sleep(0.02)
    queued = [body for code, body in seen if body["status"] == "IN_QUEUE"]
    running = [body for code, body in seen if body["status"] == "IN_PROGRESS"]
    assert queued and running
    assert all(code == 202 for code, body in seen[:-1])
    assert {b["queue_position"] for b in queued} <= {0, 1, 2} and "logs" not in queued[0]
    assert all(isinstance(b["logs"], list) for b in running)
    assert running[-1]["logs"][0]["message"] == "Loading model"
    code, done = seen[-1]
    assert code == 200 and done["status"] == "COMPLETED"
    assert "error" not in done and done["metrics"]["inference_time"] > 0
    messages = [entry["message"] for entry in done["logs"]]
    assert messages[0] == "Loading model" and messages[-1] == "Step 10/10"
    entry = done["logs"][1]
    assert entry["level"] == "INFO" and entry["source"] == "user" and "T" in entry["timestamp"]
    # Without logs asked for (any spelling), the key is still there, null.
    for flag in ("0", "false"):
        quiet = client.get(submitted["status_url"], params={"logs": flag}, headers=AUTH).json()
        assert "logs" in quiet and quiet["logs"] is None
    assert client.get(submitted["status_url"], params={"logs": "true"}, headers=AUTH).json()["logs"]


def test_status_of_unknown_request_or_other_app_is_404(client: httpx.Client) -> None:
    submitted = _submit(client)
    rid = submitted["request_id"]
    for path in (
        f"/queue/{KLING_APP}/requests/00000000-0000-4000-8000-000000000000/status",
        f"/queue/fal-ai/veo2/requests/{rid}/status",
        f"/queue/fal-ai/veo2/requests/{rid}",
    ):
        response = client.get(path, headers=AUTH)
        assert response.status_code == 404
        assert response.json() == {"detail": "Request not found"}


def test_status_stream_sends_each_change_pings_and_closes(client: httpx.Client) -> None:
    submitted = _submit(client)
    events: list[dict[str, Any]] = []
    pings = 0
    started = time.monotonic()
    with client.stream("GET", submitted["status_url"] + "/stream", params={"logs": "1"}, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
            elif line.startswith(":"):
                pings += 1
    # The server closed the stream itself, right after the job finished.
    assert time.monotonic() - started < JOB_SECONDS + 3
    statuses = [event["status"] for event in events]
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "COMPLETED"
    assert "IN_PROGRESS" in statuses and statuses.count("COMPLETED") == 1
    assert len(events) >= 10  # one per log line: logs were asked for
    assert events[-1]["logs"][-1]["message"] == "Step 10/10"
    assert pings >= 1


def test_result_before_and_after_completion(client: httpx.Client) -> None:
    submitted = _submit(client, body={**INPUT, "seed": 1234})
    early = client.get(submitted["response_url"], headers=AUTH)
    assert early.status_code == 400
    assert early.json() == {"detail": "Request is still in progress"}
    _wait_completed(client, submitted)
    result = client.get(submitted["response_url"], headers=AUTH)
    assert result.status_code == 200
    assert result.headers["x-fal-request-id"] == submitted["request_id"]
    body = result.json()
    assert body["seed"] == 1234
    video = body["video"]
    assert video["content_type"] == "video/mp4" and video["file_name"] == "output.mp4"
    download = client.get(video["url"])
    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    assert len(download.content) == video["file_size"]
    assert download.content[4:8] == b"ftyp"
    # faststart: the index comes before the media, so a browser can play while downloading.
    assert download.content.find(b"moov") < download.content.find(b"mdat")
    assert 1_000 < video["file_size"] < 150_000


def test_video_answers_range_requests(client: httpx.Client) -> None:
    full = client.get("/files/sample.mp4").content
    part = client.get("/files/sample.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-type"] == "video/mp4"
    assert part.headers["content-range"] == f"bytes 100-199/{len(full)}"
    assert part.content == full[100:200]


def test_failure_injected_by_prompt(client: httpx.Client) -> None:
    submitted = _submit(client, body={**INPUT, "prompt": "make it [fail] please"})
    done = _wait_completed(client, submitted)
    assert done["status"] == "COMPLETED" and done["error"] and done["error_type"]
    result = client.get(submitted["response_url"], headers=AUTH)
    assert result.status_code == 500
    assert result.json()["detail"] and result.json()["error_type"] == done["error_type"]


def test_cancel(client: httpx.Client) -> None:
    submitted = _submit(client)
    cancel = client.put(submitted["cancel_url"], headers=AUTH)
    assert cancel.status_code == 202
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    done = _wait_completed(client, submitted, timeout=2.0)
    assert done["error"] == "Request was cancelled"
    result = client.get(submitted["response_url"], headers=AUTH)
    assert result.status_code == 400 and result.json() == {"detail": "Request was cancelled"}
    again = client.put(submitted["cancel_url"], headers=AUTH)
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    unknown = client.put(f"/queue/{KLING_APP}/requests/00000000-0000-4000-8000-000000000000/cancel", headers=AUTH)
    assert unknown.status_code == 404


# ---- run host ---------------------------------------------------------------------------------


def test_run_waits_and_returns_the_result(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post(f"/run/{KLING}", json=INPUT, headers=AUTH)
    assert response.status_code == 200
    assert time.monotonic() - started >= JOB_SECONDS * 0.9
    assert response.json()["video"]["url"].endswith("/files/sample.mp4")
    failed = client.post(f"/run/{KLING}", json={**INPUT, "prompt": "[fail]"}, headers=AUTH)
    assert failed.status_code == 500 and "detail" in failed.json()


# ---- rest host and storage --------------------------------------------------------------------


def test_upload_roundtrip(client: httpx.Client) -> None:
    initiate = client.post(
        "/rest/storage/upload/initiate",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "image/png", "file_name": "cat photo.png"},
        headers=AUTH,
    )
    assert initiate.status_code == 200
    urls = initiate.json()
    assert urls["file_url"].endswith("/" + quote("cat photo.png"))
    payload = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    # No key: the signed URL is the authorization, as with fal's CDN.
    put = client.put(urls["upload_url"], content=payload, headers={"Content-Type": "image/png"})
    assert put.status_code == 200
    fetched = client.get(urls["file_url"])
    assert fetched.status_code == 200
    assert fetched.content == payload and fetched.headers["content-type"] == "image/png"
    assert client.put(urls["upload_url"], content=b"again").status_code == 403
    forged = urls["upload_url"][:-4] + "AAAA"
    assert client.put(forged, content=b"x").status_code == 403
    assert client.put(urls["upload_url"].rsplit("/", 1)[0] + "/garbage", content=b"x").status_code == 403


def test_tokens(client: httpx.Client) -> None:
    response = client.post("/rest/tokens/", json={"allowed_apps": ["kling-video"], "token_expiration": 120}, headers=AUTH)
    assert response.status_code == 200
    assert isinstance(response.json()["token"], str) and len(response.json()["token"]) > 20


# ---- webhooks ---------------------------------------------------------------------------------


class _Receiver:
    """A tiny HTTP server that records webhook deliveries and answers with scripted status codes."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def wait(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.deliveries) >= count, f"got {len(self.deliveries)} deliveries, wanted {count}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[_Receiver]:
    hook = _Receiver()
    yield hook
    hook.close()


def _verify(jwks: dict[str, Any], headers: dict[str, str], body: bytes) -> bool:
    """fal's documented check, written independently of the emulator's signing code."""
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    for key in jwks["keys"]:
        raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
        try:
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
            return True
        except InvalidSignature:
            continue
    return False


def test_webhook_is_signed_and_verifies_against_jwks(client: httpx.Client, receiver: _Receiver) -> None:
    submitted = _submit(client, fal_webhook=receiver.url)
    receiver.wait(1)
    headers, raw = receiver.deliveries[0]
    body = json.loads(raw)
    assert body["request_id"] == submitted["request_id"] == headers["x-fal-webhook-request-id"]
    assert body["gateway_request_id"] == submitted["request_id"]
    assert body["status"] == "OK" and body["error"] is None and body["payload_error"] is None
    assert body["payload"] == client.get(submitted["response_url"], headers=AUTH).json()
    assert abs(int(headers["x-fal-webhook-timestamp"]) - time.time()) < 30
    assert len(bytes.fromhex(headers["x-fal-webhook-signature"])) == 64
    jwks_response = client.get("/rest/.well-known/jwks.json")  # public: no key
    assert jwks_response.status_code == 200
    jwks = jwks_response.json()
    assert jwks["keys"][0]["kty"] == "OKP" and jwks["keys"][0]["crv"] == "Ed25519"
    assert "=" not in jwks["keys"][0]["x"]
    assert _verify(jwks, headers, raw)
    assert not _verify(jwks, headers, raw + b" ")


def test_webhook_reports_errors_and_retries(client: httpx.Client) -> None:
    hook = _Receiver(statuses=[500, 503])
    try:
        submitted = _submit(client, body={**INPUT, "prompt": "[fail]"}, fal_webhook=hook.url)
        hook.wait(3)
        bodies = [json.loads(raw) for _, raw in hook.deliveries]
        assert all(b == bodies[0] for b in bodies)
        assert bodies[0]["status"] == "ERROR" and bodies[0]["error"]
        attempts = [w for w in client.get("/_control/webhooks").json() if w["request_id"] == submitted["request_id"]]
        assert [(w["attempt"], w["status_code"]) for w in attempts] == [(1, 500), (2, 503), (3, 200)]
    finally:
        hook.close()


def test_webhook_gives_up_after_retries_on_connection_errors(client: httpx.Client) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"
    submitted = _submit(client, fal_webhook=dead)
    deadline = time.monotonic() + 10
    attempts: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(attempts) < 3:
        attempts = [w for w in client.get("/_control/webhooks").json() if w["request_id"] == submitted["request_id"]]
        time.sleep(0.05)
    time.sleep(0.3)
    attempts = [w for w in client.get("/_control/webhooks").json() if w["request_id"] == submitted["request_id"]]
    # 1 try + FALGATE_EMULATOR_WEBHOOK_RETRIES=2 retries.
    assert [w["attempt"] for w in attempts] == [1, 2, 3]
    assert all(w["status_code"] is None and w["error"] and w["url"] == dead for w in attempts)


# ---- control surface --------------------------------------------------------------------------


def test_request_log_masks_the_key_but_keeps_other_credentials(client: httpx.Client) -> None:
    assert client.delete("/_control/requests").status_code == 200
    client.post(f"/queue/{KLING}", json=INPUT, headers={**AUTH, "x-fal-queue-priority": "low"}, params={"a": "b"})
    client.get(f"/queue/{KLING_APP}/requests/x/status", headers={"Authorization": "Bearer caller-own-token"})
    client.get("/healthz")  # not a fal host: not logged
    log = client.get("/_control/requests")
    assert CANARY_FAL_KEY not in log.text and "canary-secret" not in log.text
    entries = log.json()
    assert [(e["method"], e["path"]) for e in entries] == [
        ("POST", f"/queue/{KLING}"),
        ("GET", f"/queue/{KLING_APP}/requests/x/status"),
    ]
    first, second = entries
    assert first["headers"]["authorization"] == "Key <valid>"
    assert first["headers"]["x-fal-queue-priority"] == "low"
    assert first["query"] == "a=b"
    assert first["body_size"] == int(first["headers"]["content-length"]) > 0
    assert second["headers"]["authorization"] == "Bearer caller-own-token"
    client.delete("/_control/requests")
    assert client.get("/_control/requests").json() == []


def test_fault_status_times_and_method(client: httpx.Client) -> None:
    status_path = f"/queue/{KLING_APP}/requests/00000000-0000-4000-8000-000000000000/status"
    fault = {"status": 503, "times": 2, "path_contains": "/status", "method": "GET"}
    assert client.post("/_control/faults", json=fault).status_code == 200
    # A submit does not match (path and method), so it is not consumed by it.
    assert client.post(f"/queue/{KLING}", json=INPUT, headers=AUTH).status_code == 200
    for _ in range(2):
        injected = client.get(status_path, headers=AUTH)
        assert injected.status_code == 503 and injected.json() == {"detail": "Injected fault"}
    assert client.get(status_path, headers=AUTH).status_code == 404


def test_fault_delay_without_status_behaves_normally(client: httpx.Client) -> None:
    client.post("/_control/faults", json={"status": None, "delay": 0.4, "path_contains": "/queue/"})
    started = time.monotonic()
    response = client.post(f"/queue/{KLING}", json=INPUT, headers=AUTH)
    assert response.status_code == 200 and response.json()["status"] == "IN_QUEUE"
    assert time.monotonic() - started >= 0.4


def test_fault_drop_closes_the_connection(client: httpx.Client) -> None:
    client.post("/_control/faults", json={"drop": True, "path_contains": "/status"})
    with pytest.raises(httpx.TransportError):
        client.get(f"/queue/{KLING_APP}/requests/x/status", headers=AUTH)
    # Only once: the next call is answered normally.
    assert client.get(f"/queue/{KLING_APP}/requests/x/status", headers=AUTH).status_code == 404


def test_faults_can_be_cleared(client: httpx.Client) -> None:
    client.post("/_control/faults", json={"status": 500, "times": 5})
    assert client.delete("/_control/faults").status_code == 200
    assert client.get("/_control/faults").json() == []
    assert client.post(f"/queue/{KLING}", json=INPUT, headers=AUTH).status_code == 200


def test_control_job_view(client: httpx.Client) -> None:
    submitted = _submit(client, body={**INPUT, "prompt": "inspect me"})
    job = client.get(f"/_control/jobs/{submitted['request_id']}")
    assert job.status_code == 200 and job.json()["input"]["prompt"] == "inspect me"
    assert client.get("/_control/jobs/nope").status_code == 404


# ---- mounted in another app -------------------------------------------------------------------


async def test_mounted_under_a_prefix_hands_out_prefixed_urls() -> None:
    """In-process, as the gateway mounts it without FAL_KEY: the parent's lifespan never starts it."""
    from fastapi import FastAPI

    parent = FastAPI()
    emulator_app = create_emulator_app(EmulatorConfig(key="mounted-key", job_seconds=0.3))
    parent.mount("/_emulator", emulator_app)
    headers = {"Authorization": "Key mounted-key"}
    transport = httpx.ASGITransport(app=parent)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as http:
            submitted = (await http.post(f"/_emulator/queue/{KLING}", json=INPUT, headers=headers)).json()
            assert submitted["status_url"].startswith(f"http://gateway.test/_emulator/queue/{KLING_APP}/requests/")
            upload = await http.post("/_emulator/rest/storage/upload/initiate", json={"file_name": "a.txt"}, headers=headers)
            assert upload.json()["upload_url"].startswith("http://gateway.test/_emulator/files/upload/")
            deadline = time.monotonic() + 5
            while (await http.get(submitted["status_url"], headers=headers)).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            result = (await http.get(submitted["response_url"], headers=headers)).json()
            assert result["video"]["url"] == "http://gateway.test/_emulator/files/sample.mp4"
            video = await http.get(result["video"]["url"], headers={"Range": "bytes=0-9"})
            assert video.status_code == 206
            log = (await http.get("/_emulator/_control/requests")).json()
            assert log[0]["path"] == f"/queue/{KLING}"
            # No server transport to close in-process: a drop surfaces as httpx's own transport error.
            await http.post("/_emulator/_control/faults", json={"drop": True})
            with pytest.raises(httpx.TransportError):
                await http.get(submitted["status_url"], headers=headers)
    finally:
        await emulator_app.state.emulator.shutdown()
