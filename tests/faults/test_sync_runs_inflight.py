"""Sync runs (`fal.run`) hold an upstream connection as long as fal takes: through either front door they
take an in-flight slot like a queue submit, so `FALGATE_MAX_INFLIGHT` bounds them too."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import leak_checked_client
from tests.faults.tally import Tally
from tests.invalid_bodies import LUMA, VALID_BODIES
from tests.servers import Server, start_emulator, start_gateway

PROXY = "/api/fal/proxy"


@pytest.fixture
def fal() -> Iterator[Server]:
    server = start_emulator(job_seconds=0.2)
    yield server
    server.stop()


def test_concurrent_sync_runs_through_the_proxy_share_the_inflight_cap(fal: Server, tally: Tally) -> None:
    gateway = start_gateway(fal, FALGATE_MAX_INFLIGHT="1")
    try:
        # fal takes 2 s to answer each run, so the four runs overlap.
        httpx.post(f"{fal.url}/_control/faults", json={"status": None, "delay": 2.0, "times": 4,
                                                      "path_contains": "/run/", "method": "POST"}).raise_for_status()
        with leak_checked_client(gateway.url) as client:
            def run(_: int) -> httpx.Response:
                target = {"x-fal-target-url": f"https://fal.run/{LUMA}"}
                return client.post(PROXY, json=VALID_BODIES[LUMA], headers=target)

            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(run, range(4)))
            statuses = sorted(response.status_code for response in answers)
            assert statuses == [200, 429, 429, 429], [(r.status_code, r.text[:200]) for r in answers]
            refused = next(r for r in answers if r.status_code == 429)
            assert refused.json()["limit"] == "inflight"
            # The slot is free again once fal answered.
            assert client.get("/v1/usage").json()["inflight"] == 0
            assert run(0).status_code == 200
        tally.record("store", undocumented_5xx=tally.undocumented_5xx(statuses))
    finally:
        gateway.stop()
