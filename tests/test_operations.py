"""Operating the gateway: readiness, metrics, structured logs and a graceful SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Upstream, leak_checked_client
from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server, free_port, start_emulator, start_gateway

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


class PrivateRedis:
    """A redis-server of this test's own on a free port, so stopping it disturbs nobody else."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required (apt-get install redis-server)"
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    redis = PrivateRedis()
    redis.start()
    yield redis
    redis.stop()


def _wait_status(client: httpx.Client, path: str, want: int, timeout: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(path)
        if response.status_code == want or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_readyz_follows_the_store(emulator: Server, private_redis: PrivateRedis) -> None:
    server = start_gateway(emulator, FALGATE_STORE_URL=private_redis.url)
    try:
        with leak_checked_client(server.url) as client:
            assert client.get("/readyz").status_code == 200
            private_redis.stop()
            down = _wait_status(client, "/readyz", 503)
            assert down.status_code == 503
            assert down.json()["reason"] == "store"
            assert client.get("/healthz").status_code == 200, "alive while not ready"
            private_redis.start()
            assert _wait_status(client, "/readyz", 200).status_code == 200
    finally:
        server.stop()


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_and_stay_bounded(client: httpx.Client, upstream: Upstream) -> None:
    before = client.get("/metrics").text
    submitted = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
    assert submitted.status_code == 200
    assert client.post(f"/{KLING}", json={"prompt": "x"}).status_code == 422
    client.get(submitted.json()["status_url"])
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    route = "/" + KLING
    assert _metric(text, "falgate_requests_total", route=route, status="200") > _metric(
        before, "falgate_requests_total", route=route, status="200"
    )
    assert _metric(text, "falgate_validation_rejections_total", model="kling-2.1-standard") > _metric(
        before, "falgate_validation_rejections_total", model="kling-2.1-standard"
    )
    assert _metric(text, "falgate_upstream_latency_seconds_count", operation="submit") > _metric(
        before, "falgate_upstream_latency_seconds_count", operation="submit"
    )
    for series in (
        "falgate_refusals_total",
        "falgate_webhook_verifications_total",
        "falgate_relay_deliveries_total",
        "falgate_relay_outbox_depth",
        "falgate_open_connections",
        "falgate_upstream_errors_total",
    ):
        assert f"# TYPE {series.removesuffix('_total')}" in text, series
    request_id = submitted.json()["request_id"]
    assert request_id not in text, "no per-request labels"
    assert "caller" not in text.replace("# HELP", ""), "no per-caller labels"


def test_metrics_token(emulator: Server) -> None:
    server = start_gateway(emulator, FALGATE_METRICS_TOKEN="metrics-token-1234567")
    try:
        with leak_checked_client(server.url) as client:
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-1234567"})
            assert ok.status_code == 200 and "falgate_requests_total" in ok.text
    finally:
        server.stop()


def test_one_json_log_line_per_request(emulator: Server) -> None:
    server = start_gateway(emulator, FALGATE_LOG_FORMAT="json")
    try:
        with leak_checked_client(server.url) as client:
            body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            client.get(body["status_url"])
        time.sleep(0.3)
        entries = [json.loads(line) for line in server.lines if line.startswith("{")]
        access = [e for e in entries if e.get("logger") == "falgate.access" and e.get("operation") == "submit"]
        assert len(access) == 1
        line = access[0]
        assert line["status"] == 200 and line["upstream_status"] == 200
        assert line["model"] == "kling-2.1-standard" and line["request_id"] == body["request_id"]
        assert line["caller_id"] == "127.0.0.1" and line["duration_ms"] >= 0
        assert any(e.get("operation") == "status" for e in entries if e.get("logger") == "falgate.access")
    finally:
        server.stop()


def test_a_client_leaving_mid_body_is_499_not_an_error(emulator: Server) -> None:
    # One front-door request (a mirrored submit), one by an ordinary FastAPI route (fal's webhook receiver).
    server = start_gateway(emulator, FALGATE_LOG_FORMAT="json")
    paths = [f"/{KLING}", "/v1/fal/webhook"]
    try:
        for path in paths:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                head = f"POST {path} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                sock.sendall(f"{head}Content-Length: 1000\r\n\r\n{{\"prompt\":".encode())
                time.sleep(0.3)
        deadline = time.monotonic() + 5
        while True:
            entries = [json.loads(line) for line in server.lines if line.startswith("{")]
            access = {e["route"]: e["status"] for e in entries if e.get("logger") == "falgate.access"}
            if all(path in access for path in paths) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {path: access.get(path) for path in paths} == {path: 499 for path in paths}
        assert [e for e in entries if e.get("level") == "error"] == []
    finally:
        server.stop()


def test_sigterm_drains_streams_and_in_flight_requests() -> None:
    # Jobs long enough that the watched one is still running when the signal comes.
    emulator = start_emulator(job_seconds=20.0)
    upstream = Upstream(emulator)
    server = start_gateway(emulator, FALGATE_SHUTDOWN_GRACE_SECONDS="8")
    sse_lines: list[str] = []
    slow_result: dict[str, object] = {}
    try:
        with leak_checked_client(server.url) as client:
            watched = client.post(f"/{KLING}", json={**VALID_BODIES[KLING], "prompt": "a long one"}).json()
            other = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()

        def read_events() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                with c.stream("GET", f"/v1/requests/{watched['request_id']}/events") as stream:
                    for line in stream.iter_lines():
                        sse_lines.append(line)

        def slow_status() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                response = c.get(other["status_url"])
                slow_result["status"] = response.status_code

        reader = threading.Thread(target=read_events)
        reader.start()
        time.sleep(0.5)
        upstream.fault(status=None, delay=1.5, times=1, path_contains=f"{other['request_id']}/status")
        worker = threading.Thread(target=slow_status)
        worker.start()
        time.sleep(0.3)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        worker.join(timeout=15)
        reader.join(timeout=15)
        server.proc.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
        emulator.stop()
    assert slow_result.get("status") in (200, 202), "the in-flight request finished during shutdown"
    assert "event: reconnect" in sse_lines, sse_lines[-5:]
    assert server.proc.returncode in (0, -signal.SIGTERM), "uvicorn re-raises SIGTERM after a clean shutdown"
    assert elapsed < 8 + 2, f"exited after {elapsed:.1f}s, grace is 8s"
