"""Helpers for the webhook-relay tests: SSE reading, a client-webhook receiver, a JWKS server, fal signing.

Everything here is a real server or a real HTTP client on 127.0.0.1; nothing reaches into the gateway.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from app.emulator.signing import WebhookSigner
from app.relay.client_webhooks import new_secret
from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
KLING_BODY = VALID_BODIES[KLING]
FAL_USER = "fal-user-relay-tests"


# ---- callers ------------------------------------------------------------------------------------


def caller_keys(*names: str) -> dict[str, str]:
    """Fresh API keys (unique per test) for the named callers."""
    return {name: f"{name}-key-{uuid.uuid4().hex}" for name in names}


def auth_env(keys: dict[str, str]) -> dict[str, str]:
    return {"FALGATE_AUTH": "api_key", "FALGATE_API_KEYS": ",".join(f"{who}:{key}" for who, key in keys.items())}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def webhook_env(secret: str | None = None, *, allow_private: bool = True, retry_scale: float = 0.02) -> dict[str, str]:
    env = {"FALGATE_WEBHOOK_SECRET": secret or new_secret(), "FALGATE_WEBHOOK_RETRY_SCALE": str(retry_scale)}
    if allow_private:
        env["FALGATE_WEBHOOK_ALLOW_PRIVATE"] = "true"
    return env


def submit(client: httpx.Client, *, fal_webhook: str | None = None, body: dict | None = None) -> str:
    params = {"fal_webhook": fal_webhook} if fal_webhook else None
    answer = client.post(f"/{KLING}", json=body or KLING_BODY, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def request_state(client: httpx.Client, request_id: str) -> str | None:
    for record in client.get("/v1/requests", params={"limit": 500}).json()["requests"]:
        if record["request_id"] == request_id:
            return record["state"]
    return None


def wait_state(client: httpx.Client, request_id: str, state: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if request_state(client, request_id) == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{request_id} did not reach {state} in {timeout}s (is {request_state(client, request_id)})")


def metric(server: Server, name: str, **labels: str) -> float:
    """One sample of the gateway's Prometheus output (0.0 when the series does not exist yet)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if _normalise(series) == wanted:
            return float(value)
    return 0.0


def _normalise(series: str) -> str:
    if "{" not in series:
        return series
    name, _, rest = series.partition("{")
    pairs = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(pairs) + "}"


# ---- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class SseEvent:
    id: int | None
    event: str
    data: Any


@dataclass
class SseRead:
    status: int
    events: list[SseEvent]
    closed: bool  # the server ended the stream (rather than our limit or deadline)
    pings: int
    elapsed: float

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events if e.id is not None]

    @property
    def kinds(self) -> list[str]:
        return [e.event for e in self.events]

    def of(self, kind: str) -> list[SseEvent]:
        return [e for e in self.events if e.event == kind]


def read_sse(
    base_url: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    max_events: int | None = None,
    deadline: float = 15.0,
) -> SseRead:
    """Read an SSE stream until the server closes it, `max_events` arrived, or `deadline` seconds passed.

    The gateway pings every FALGATE_SSE_PING_SECONDS, so the deadline is checked at least that often.
    """
    started = time.monotonic()
    events: list[SseEvent] = []
    pings = 0
    closed = False
    fields: dict[str, str] = {}
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(deadline + 5)) as client:
        with client.stream("GET", path, headers=headers, params=params) as response:
            if response.status_code != 200:
                response.read()
                return SseRead(response.status_code, [], True, 0, time.monotonic() - started)
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            while True:
                if time.monotonic() - started > deadline:
                    break
                try:
                    line = next(lines)
                except StopIteration:
                    closed = True
                    break
                if line.startswith(":"):
                    pings += 1
                    continue
                if line == "":
                    if "event" in fields or "data" in fields:
                        events.append(_event(fields))
                        if max_events is not None and len(events) >= max_events:
                            break
                    fields = {}
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
    return SseRead(200, events, closed, pings, time.monotonic() - started)


def _event(fields: dict[str, str]) -> SseEvent:
    raw = fields.get("data", "")
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError:
        data = raw
    seq = fields.get("id")
    return SseEvent(int(seq) if seq and seq.isdigit() else None, fields.get("event", "message"), data)


# ---- little HTTP servers in threads ---------------------------------------------------------------


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class ThreadServer:
    """A ThreadingHTTPServer on a free port, stopped with `close()`."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class Receiver(ThreadServer):
    """A caller's webhook endpoint: records every POST; `fail_first` attempts answer 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[Received] = []
        self.answers: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(time.time(), self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    code = 500 if len(receiver.received) <= receiver.fail_first else 200
                    receiver.answers.append(code)
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(Handler)
        self.hook_url = f"{self.url}/hook"

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.received)} deliveries, expected {count} within {timeout}s")

    @property
    def delivered(self) -> list[Received]:
        """The attempts the receiver accepted (answered 2xx)."""
        return [r for r, code in zip(self.received, self.answers, strict=False) if code < 300]


class JwksServer(ThreadServer):
    """Publishes our own Ed25519 test key as fal publishes its keys; counts fetches."""

    def __init__(self, signer: WebhookSigner) -> None:
        self.signer = signer
        self.fetches = 0
        jwks = self

        class Handler(_Quiet):
            def do_GET(self) -> None:  # noqa: N802
                jwks.fetches += 1
                body = json.dumps(jwks.signer.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler)
        self.jwks_url = f"{self.url}/.well-known/jwks.json"


class FakeQueue(ThreadServer):
    """fal's queue host, only as far as a submit: it answers with the request id `next_id()` returns."""

    def __init__(self, next_id: Callable[[], str]) -> None:
        self.submits: list[Received] = []
        queue = self

        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                queue.submits.append(Received(time.time(), self.path, dict(self.headers.items()), body))
                request_id = next_id()
                root = f"{queue.url}/fal-ai/kling-video/requests/{request_id}"
                answer = json.dumps(
                    {
                        "status": "IN_QUEUE",
                        "request_id": request_id,
                        "response_url": root,
                        "status_url": f"{root}/status",
                        "cancel_url": f"{root}/cancel",
                        "queue_position": 0,
                    }
                ).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        super().__init__(Handler)


# ---- fal's webhook, signed by the test ------------------------------------------------------------


def fal_webhook_body(request_id: str, *, video_url: str = "https://v3.fal.media/files/relay/out.mp4") -> bytes:
    """A success body shaped like fal's (fal-protocol.md, "Webhooks"), serialised once: signed bytes = sent bytes."""
    body = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK",
        "payload": {"video": {"url": video_url, "content_type": "video/mp4", "file_name": "out.mp4"}, "seed": 7},
        "error": None,
        "payload_error": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass
class FalSender:
    """Signs and posts webhooks to a gateway's receiver as fal would."""

    signer: WebhookSigner
    user_id: str = FAL_USER
    log: list[httpx.Response] = field(default_factory=list)

    def headers(self, request_id: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
        return {"Content-Type": "application/json", **self.signer.headers(request_id, self.user_id, body, now=now)}

    def post(self, gateway: Server, body: bytes, headers: dict[str, str]) -> httpx.Response:
        answer = httpx.post(f"{gateway.url}/v1/fal/webhook", content=body, headers=headers, timeout=10)
        self.log.append(answer)
        return answer
