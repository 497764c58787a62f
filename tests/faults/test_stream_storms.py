"""SSE and WebSocket disconnect storms: what a departed client held is released.

Many clients connect to quiet jobs' event streams and go away. Afterwards the gateway's memory is back
near where it was, and it stops asking fal for those jobs' status streams (counted in the emulator's own
request log): a leaked reader keeps its keeper, which re-opens an upstream stream every 10 s forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import websockets

from tests.faults.emulator_controls import FalControls
from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import Tally
from tests.relay_helpers import KLING, KLING_BODY, auth_env, bearer, caller_keys, read_sse
from tests.servers import Server, start_emulator, start_gateway

_REENSURE = 10.0  # app.relay.readers re-asks for a watcher this often while someone reads


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=120, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


def _rss_kib(server: Server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _quiet_jobs(client: httpx.Client, count: int) -> list[str]:
    return [client.post(f"/{KLING}", json=KLING_BODY).json()["request_id"] for _ in range(count)]


def _sse_storm(gateway: Server, key: str, request_ids: list[str], rounds: int) -> list[int]:
    statuses = []
    for _ in range(rounds):
        for rid in request_ids:
            with httpx.Client(base_url=gateway.url, headers=bearer(key), timeout=10) as client:
                with client.stream("GET", f"/v1/requests/{rid}/events") as response:
                    statuses.append(response.status_code)
                    next(response.iter_lines())  # connected (an event or a ping), then gone
    return statuses


async def _ws_storm(gateway: Server, key: str, request_ids: list[str], rounds: int) -> None:
    url = gateway.url.replace("http://", "ws://") + "/v1/ws"
    for _ in range(rounds):
        for rid in request_ids:
            async with websockets.connect(url, additional_headers=bearer(key)) as ws:
                await ws.send(f'{{"type":"subscribe","request_id":"{rid}"}}')
                await ws.recv()


@pytest.mark.parametrize("kind", ["sse", "websocket"])
def test_a_disconnect_storm_releases_readers_and_upstream_streams(emulator: Server, tally: Tally, kind: str) -> None:
    keys = caller_keys("ona")
    fal = FalControls(emulator)
    fal.reset()
    gateway = start_gateway(emulator, **auth_env(keys))
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["ona"]), timeout=30) as ona:
            rids = _quiet_jobs(ona, 5)
            # fal's status streams answer 500: a watcher ends at once, so any later stream is a keeper's.
            fal.fail(status=500, times=100000, path_contains="/status/stream")
            statuses: list[int] = []
            if kind == "sse":
                statuses += _sse_storm(gateway, keys["ona"], rids, rounds=2)
                baseline = _rss_kib(gateway)
                statuses += _sse_storm(gateway, keys["ona"], rids, rounds=8)
            else:
                asyncio.run(_ws_storm(gateway, keys["ona"], rids, rounds=2))
                baseline = _rss_kib(gateway)
                asyncio.run(_ws_storm(gateway, keys["ona"], rids, rounds=8))
            time.sleep(1.0)
            httpx.delete(f"{emulator.url}/_control/requests")
            time.sleep(_REENSURE + 1.5)
            reopened = len(fal.requests("/status/stream"))
            grown = _rss_kib(gateway) - baseline
            tally.record("disconnect storms", undocumented_5xx=tally.undocumented_5xx(statuses))
            assert reopened == 0, f"{reopened} upstream status streams opened after every client left"
            assert grown < 20_000, f"RSS grew {grown} KiB over a storm of 40 disconnects"
            assert all(s == 200 for s in statuses)
    finally:
        gateway.stop()
        fal.reset()


def test_a_quiet_job_keeps_one_upstream_stream_across_replicas(
    emulator: Server, tally: Tally, private_redis: PrivateRedis
) -> None:
    """No fal event for longer than the watcher's lease: the lease is renewed anyway, so the second
    replica's reader rides the first one's stream instead of opening its own."""
    keys = caller_keys("pat")
    env = {"FALGATE_STORE_URL": private_redis.url, "FALGATE_WATCHER_LEASE_SECONDS": "1", **auth_env(keys)}
    first, second = start_gateway(emulator, **env), start_gateway(emulator, **env)
    fal = FalControls(emulator)
    fal.reset()  # no fault left by a storm: every stream request counted here is a real one
    try:
        with httpx.Client(base_url=first.url, headers=bearer(keys["pat"]), timeout=30) as pat:
            [rid] = _quiet_jobs(pat, 1)
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(read_sse, first.url, f"/v1/requests/{rid}/events", headers=bearer(keys["pat"]),
                                  deadline=5.0)
            time.sleep(3.0)  # three leases long, and the job says nothing (its queue steps are 10 s apart)
            late = read_sse(second.url, f"/v1/requests/{rid}/events", headers=bearer(keys["pat"]), deadline=1.5)
            early = reading.result()
        streams = len(fal.requests(f"{rid}/status/stream"))
        tally.record("disconnect storms", undocumented_5xx=tally.undocumented_5xx([early.status, late.status]))
        assert streams == 1, f"{streams} upstream status streams for one quiet job"
    finally:
        first.stop()
        second.stop()
