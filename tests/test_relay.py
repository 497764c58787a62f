"""The relay's live sinks over real HTTP: SSE, WebSocket, two replicas on one Redis, and fan-out.

A real emulator runs the jobs (slow enough that status and log events are observable) and sends fal's
signed webhooks to the gateway's own receiver; every client here is a plain HTTP/WebSocket client.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from websockets.sync.client import connect as ws_connect

from tests.conftest import Upstream
from tests.redis_server import redis_url
from tests.relay_helpers import (
    SseRead,
    auth_env,
    bearer,
    caller_keys,
    metric,
    read_sse,
    request_state,
    submit,
    wait_state,
)
from tests.servers import Server, start_emulator, start_gateway

JOB_SECONDS = 2.0
REDIS_URL = redis_url(11)
KEYS = caller_keys("alice", "bob")


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=JOB_SECONDS, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def relay_gateway(slow_emulator: Server) -> Iterator[Server]:
    server = start_gateway(slow_emulator, FALGATE_SSE_PING_SECONDS="0.2", **auth_env(KEYS))
    yield server
    server.stop()


@pytest.fixture
def alice(relay_gateway: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay_gateway.url, headers=bearer(KEYS["alice"]), timeout=30) as client:
        yield client


def events_path(request_id: str) -> str:
    return f"/v1/requests/{request_id}/events"


def emulator_job(emulator: Server, request_id: str) -> dict:
    return httpx.get(f"{emulator.url}/_control/jobs/{request_id}").json()


def assert_complete_history(read: SseRead, emulator: Server, request_id: str) -> None:
    """Every event exactly once, in order, ending in the result; the logs are exactly fal's logs."""
    assert read.ids == list(range(1, len(read.events) + 1)), read.ids
    assert read.kinds[-1] == "completed" and read.kinds.count("completed") == 1, read.kinds
    job = emulator_job(emulator, request_id)
    logs = [line["message"] for event in read.of("logs") for line in event.data["logs"]]
    assert logs == [line["message"] for line in job["logs"]], "log lines lost, repeated or reordered"
    result = read.events[-1].data
    assert result["request_id"] == request_id and result["status"] == "OK"
    assert result["payload"]["video"]["url"] == f"{emulator.url}/files/sample.mp4"


def test_sse_sees_status_logs_and_the_result(relay_gateway: Server, slow_emulator: Server, alice: httpx.Client) -> None:
    rid = submit(alice)
    read = read_sse(relay_gateway.url, events_path(rid), headers=bearer(KEYS["alice"]), deadline=15)
    print(f"\nSSE: {len(read.events)} events, {read.pings} pings, closed after {read.elapsed:.2f}s")
    assert read.status == 200
    assert read.closed, "the stream ends after the terminal event"
    assert {"status", "logs", "completed"} <= set(read.kinds), read.kinds
    states = [e.data["status"] for e in read.of("status")]
    assert states[0] == "IN_QUEUE" and "IN_PROGRESS" in states, states
    assert all("url" not in k for e in read.of("status") for k in e.data), "status events carry no upstream URLs"
    assert read.pings >= 2, "keep-alive pings every FALGATE_SSE_PING_SECONDS"
    assert_complete_history(read, slow_emulator, rid)
    # The result in the event is the result fal serves.
    fetched = alice.get(f"/fal-ai/kling-video/requests/{rid}")
    assert fetched.status_code == 200
    assert fetched.json() == read.events[-1].data["payload"]
    assert request_state(alice, rid) == "COMPLETED"


def test_a_client_arriving_after_completion_gets_the_result_at_once(
    relay_gateway: Server, slow_emulator: Server, alice: httpx.Client
) -> None:
    accepted_before = metric(relay_gateway, "falgate_webhook_verifications_total", outcome="accepted")
    rid = submit(alice)
    # Nobody watches, the poller's grace period is 60 s: only fal's signed webhook can finish it.
    wait_state(alice, rid, "COMPLETED", timeout=15)
    assert metric(relay_gateway, "falgate_webhook_verifications_total", outcome="accepted") == accepted_before + 1
    webhooks = [w for w in httpx.get(f"{slow_emulator.url}/_control/webhooks").json() if w["request_id"] == rid]
    assert [(w["url"], w["status_code"]) for w in webhooks] == [(f"{relay_gateway.url}/v1/fal/webhook", 200)]

    read = read_sse(relay_gateway.url, events_path(rid), headers=bearer(KEYS["alice"]), deadline=5)
    print(f"\nlate SSE client: {read.kinds} in {read.elapsed:.3f}s")
    assert read.closed and read.elapsed < 1.0, "replayed at once, then closed"
    assert read.kinds == ["completed"] and read.ids == [1]
    assert read.events[0].data["payload"]["video"]["url"] == f"{slow_emulator.url}/files/sample.mp4"
    # No upstream watcher is started for a finished request.
    streams = [r for r in httpx.get(f"{slow_emulator.url}/_control/requests").json() if r["path"].endswith(f"{rid}/status/stream")]
    assert streams == []


def test_reconnecting_with_last_event_id_misses_nothing_and_repeats_nothing(
    relay_gateway: Server, slow_emulator: Server, alice: httpx.Client
) -> None:
    rid = submit(alice)
    auth = bearer(KEYS["alice"])
    first = read_sse(relay_gateway.url, events_path(rid), headers=auth, max_events=3)
    assert first.ids == [1, 2, 3] and not first.closed
    time.sleep(0.5)  # events keep happening while nobody is connected
    second = read_sse(relay_gateway.url, events_path(rid), headers={**auth, "Last-Event-ID": str(first.ids[-1])}, max_events=4)
    assert second.ids == [4, 5, 6, 7], second.ids
    # The query form works too (for clients that cannot set headers); the header wins over it.
    third = read_sse(
        relay_gateway.url,
        events_path(rid),
        headers={**auth, "Last-Event-ID": str(second.ids[-1])},
        params={"after": 1},
        deadline=15,
    )
    assert third.closed
    union = first.ids + second.ids + third.ids
    print(f"\nreconnects: {first.ids} + {second.ids} + {third.ids}")
    assert union == list(range(1, len(union) + 1)), "a gap or a repeat across reconnects"
    everything = SseRead(200, first.events + second.events + third.events, True, 0, 0.0)
    assert_complete_history(everything, slow_emulator, rid)
    # And from scratch with ?after=N-1: only the result.
    tail = read_sse(relay_gateway.url, events_path(rid), headers=auth, params={"after": union[-1] - 1}, deadline=5)
    assert tail.kinds == ["completed"] and tail.ids == [union[-1]] and tail.closed


def test_resuming_after_the_final_event_ends_at_once(relay_gateway: Server, alice: httpx.Client) -> None:
    """A browser's EventSource reconnects by itself when the stream ends, sending the last id it saw:
    the completed event's. That reconnect must end promptly (an empty stream, or 204 which tells
    EventSource to stop), not hang on pings forever holding a connection per finished request."""
    rid = submit(alice)
    whole = read_sse(relay_gateway.url, events_path(rid), headers=bearer(KEYS["alice"]), deadline=15)
    assert whole.closed and whole.kinds[-1] == "completed"
    final = whole.ids[-1]
    for resume in ({"headers": {"Last-Event-ID": str(final)}}, {"params": {"after": final}}):
        read = read_sse(
            relay_gateway.url,
            events_path(rid),
            headers={**bearer(KEYS["alice"]), **resume.get("headers", {})},
            params=resume.get("params"),
            deadline=3,
        )
        outcome = f"HTTP {read.status}, {read.kinds}, closed={read.closed}, {read.pings} pings in {read.elapsed:.2f}s"
        print(f"\nresume after the final event {resume}: {outcome}")
        assert read.status in (200, 204)
        assert all(seq > final for seq in read.ids), "events repeated"
        assert read.closed and read.elapsed < 2.0, "the stream of a finished request hangs after its last event"


def test_other_callers_and_unknown_requests_are_404(relay_gateway: Server, alice: httpx.Client) -> None:
    rid = submit(alice)
    bob = read_sse(relay_gateway.url, events_path(rid), headers=bearer(KEYS["bob"]), deadline=3)
    unknown = read_sse(relay_gateway.url, events_path("00000000-0000-4000-8000-000000000000"), headers=bearer(KEYS["bob"]))
    assert bob.status == 404 and unknown.status == 404
    assert httpx.get(relay_gateway.url + events_path(rid)).status_code == 401


def test_websocket_subscribed_to_three_requests_gets_all_three_results(
    relay_gateway: Server, slow_emulator: Server, alice: httpx.Client
) -> None:
    rids = [submit(alice) for _ in range(3)]
    ws_url = relay_gateway.url.replace("http://", "ws://") + "/v1/ws"
    events: dict[str, list[dict]] = {rid: [] for rid in rids}
    started = time.monotonic()
    with ws_connect(ws_url, additional_headers=bearer(KEYS["alice"]), proxy=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
        for rid in rids:
            ws.send(json.dumps({"type": "subscribe", "request_id": rid, "after": 0}))
        subscribed: set[str] = set()
        finished: set[str] = set()
        while finished != set(rids):
            message = json.loads(ws.recv(timeout=15))
            if message["type"] == "subscribed":
                subscribed.add(message["request_id"])
                continue
            assert message["type"] == "event", message
            assert message["request_id"] in subscribed, "an event before its subscription was confirmed"
            events[message["request_id"]].append(message)
            if message["event"] in ("completed", "error"):
                finished.add(message["request_id"])
    print(f"\nWebSocket: {sum(len(v) for v in events.values())} events for 3 requests in {time.monotonic() - started:.2f}s")
    for rid in rids:
        got = events[rid]
        assert [m["id"] for m in got] == list(range(1, len(got) + 1)), (rid, [m["id"] for m in got])
        assert {"status", "logs"} <= {m["event"] for m in got}
        last = got[-1]
        assert last["event"] == "completed"
        assert last["data"]["payload"]["video"]["url"] == f"{slow_emulator.url}/files/sample.mp4"


def test_websocket_refuses_other_callers_requests(relay_gateway: Server, alice: httpx.Client) -> None:
    rid = submit(alice)
    ws_url = relay_gateway.url.replace("http://", "ws://") + "/v1/ws"
    with ws_connect(ws_url, additional_headers=bearer(KEYS["bob"]), proxy=None) as ws:
        ws.send(json.dumps({"type": "subscribe", "request_id": rid}))
        refused = json.loads(ws.recv(timeout=5))
        assert refused["type"] == "error" and refused["status"] == 404 and refused["request_id"] == rid, refused
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}, "nothing of alice's request was sent"
    with pytest.raises(Exception) as denied:
        with ws_connect(ws_url, proxy=None):
            pass
    assert "401" in str(denied.value)


# ---- two replicas on one Redis ----------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(slow_emulator: Server) -> Iterator[tuple[Server, Server]]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    env = {"FALGATE_STORE_URL": REDIS_URL, "FALGATE_SSE_PING_SECONDS": "0.2", **auth_env(KEYS)}
    a = start_gateway(slow_emulator, **env)
    # fal's webhook always lands on A, whichever replica took the submit.
    b = start_gateway(slow_emulator, FALGATE_PUBLIC_URL=a.url, **env)
    yield a, b
    b.stop()
    a.stop()


@pytest.mark.parametrize("submit_via", ["A", "B"])
def test_webhook_on_one_replica_reaches_a_watcher_on_the_other(
    replicas: tuple[Server, Server], slow_emulator: Server, submit_via: str
) -> None:
    a, b = replicas
    via = a if submit_via == "A" else b
    accepted = {name: metric(r, "falgate_webhook_verifications_total", outcome="accepted") for name, r in (("A", a), ("B", b))}
    with httpx.Client(base_url=via.url, headers=bearer(KEYS["alice"]), timeout=30) as client:
        rid = submit(client)
    # B's own status-stream watcher must not be the one that finishes the request: fal refuses it
    # (500) for this request, so only the webhook that lands on A can complete it.
    Upstream(slow_emulator).fault(status=500, times=50, path_contains=f"{rid}/status/stream")
    try:
        read = read_sse(b.url, events_path(rid), headers=bearer(KEYS["alice"]), deadline=15)
    finally:
        Upstream(slow_emulator).clear_faults()
    print(f"\nreplica B's SSE client: {read.kinds} after {read.elapsed:.2f}s (submitted via {submit_via})")
    assert read.status == 200 and read.closed
    assert read.kinds == ["completed"], "the only event is the one A received from fal"
    assert read.events[0].data["payload"]["video"]["url"] == f"{slow_emulator.url}/files/sample.mp4"
    assert metric(a, "falgate_webhook_verifications_total", outcome="accepted") == accepted["A"] + 1
    assert metric(b, "falgate_webhook_verifications_total", outcome="accepted") == accepted["B"] == 0
    webhooks = [w for w in httpx.get(f"{slow_emulator.url}/_control/webhooks").json() if w["request_id"] == rid]
    assert [w["url"] for w in webhooks] == [f"{a.url}/v1/fal/webhook"]
    for replica in (a, b):
        with httpx.Client(base_url=replica.url, headers=bearer(KEYS["alice"])) as client:
            assert request_state(client, rid) == "COMPLETED"
    # A watcher on A sees the same history, replayed from the shared store.
    again = read_sse(a.url, events_path(rid), headers=bearer(KEYS["alice"]), deadline=5)
    assert [(e.id, e.event) for e in again.events] == [(e.id, e.event) for e in read.events]
    assert read_sse(b.url, events_path(rid), headers=bearer(KEYS["bob"])).status == 404


# ---- fan-out: many watchers, one upstream stream ----------------------------------------------

FAN_OUT = 1000
FAN_JOB_SECONDS = 6.0


@pytest.fixture(scope="module")
def fan_emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=FAN_JOB_SECONDS)
    yield server
    server.stop()


async def _watch_raw(port: int, path: str, key: str, t0: float, connected: list[float], done: list[float]) -> bytes:
    """One SSE client on a raw socket (httpx is too slow to open 1,000 streams on two cores)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status = await reader.readline()
        assert b" 200 " in status, status
        stream = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if b"\nid: " not in stream and b"\nid: " in stream + chunk:
                connected.append(time.monotonic() - t0)  # the first event arrived: this watcher is live
            stream += chunk
            result = stream.find(b"event: completed")
            if result >= 0 and b"\r\n\r\n" in stream[result:]:
                done.append(time.monotonic() - t0)
                break
        return stream
    finally:
        writer.close()


def test_a_thousand_sse_watchers_cost_one_upstream_stream(fan_emulator: Server) -> None:
    keys = caller_keys("fan")
    gateway = start_gateway(fan_emulator, FALGATE_SSE_PING_SECONDS="0.2", **auth_env(keys))
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["fan"]), timeout=30) as client:
            rid = submit(client)
        path = events_path(rid)
        connected: list[float] = []
        done: list[float] = []
        during: dict[str, float] = {}

        async def run() -> list[bytes]:
            t0 = time.monotonic()
            tasks = [
                asyncio.create_task(_watch_raw(gateway.port, path, keys["fan"], t0, connected, done)) for _ in range(FAN_OUT)
            ]
            while len(connected) < FAN_OUT and not all(t.done() for t in tasks):
                await asyncio.sleep(0.05)
            if not done:  # every watcher is connected and the job is still running
                during["sse"] = await asyncio.to_thread(metric, gateway, "falgate_open_connections", kind="sse")
                during["watchers"] = await asyncio.to_thread(metric, gateway, "falgate_upstream_watchers")
                during["done"] = len(done)
            return await asyncio.wait_for(asyncio.gather(*tasks), timeout=40)

        started = time.monotonic()
        streams = asyncio.run(run())
        total = time.monotonic() - started
        print(
            f"\nfan-out: {FAN_OUT} SSE clients, all connected after {max(connected):.2f}s, results at "
            f"{min(done):.2f}-{max(done):.2f}s, total {total:.2f}s; sampled while running: {during}"
        )
        assert len(streams) == FAN_OUT
        assert all(b"event: completed" in s and b"/files/sample.mp4" in s for s in streams)
        assert sum(1 for t in connected if t < min(done)) >= 0.9 * FAN_OUT, "most watchers were live before the result"
        if during and during["done"] == 0:
            assert during["sse"] >= FAN_OUT and during["watchers"] == 1, during

        upstream = [r for r in httpx.get(f"{fan_emulator.url}/_control/requests").json() if r["path"].endswith("/status/stream")]
        assert [r["path"] for r in upstream] == [f"/queue/fal-ai/kling-video/requests/{rid}/status/stream"]

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            metric(gateway, "falgate_upstream_watchers") or metric(gateway, "falgate_open_connections", kind="sse")
        ):
            time.sleep(0.1)
        assert metric(gateway, "falgate_upstream_watchers") == 0
        assert metric(gateway, "falgate_open_connections", kind="sse") == 0
    finally:
        gateway.stop()
