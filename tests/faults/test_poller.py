"""The fallback poller goes round every late request: a full page of stuck ones does not starve the rest."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.emulator_controls import FalControls
from tests.faults.tally import Tally
from tests.relay_helpers import KLING, KLING_BODY
from tests.servers import Server, start_emulator, start_gateway

_PAGE = 100  # app.relay.poller's page


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=300, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_requests_behind_a_page_of_stuck_ones_are_polled(
    emulator: Server, tally: Tally, backend: str, request: pytest.FixtureRequest
) -> None:
    store = {"FALGATE_STORE_URL": request.getfixturevalue("private_redis").url} if backend == "redis" else {}
    gateway = start_gateway(emulator, FALGATE_WEBHOOK_GRACE_SECONDS="0", FALGATE_POLL_INTERVAL_SECONDS="0.2", **store)
    fal = FalControls(emulator)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            statuses = []
            rids = []
            for _ in range(_PAGE + 3):  # fal says IN_QUEUE about every one of them for minutes
                answer = client.post(f"/{KLING}", json=KLING_BODY)
                statuses.append(answer.status_code)
                rids.append(answer.json()["request_id"])
        behind = rids[_PAGE:]
        deadline = time.monotonic() + 10
        unpolled = behind
        while unpolled and time.monotonic() < deadline:
            time.sleep(0.5)
            unpolled = [rid for rid in behind if not fal.requests(f"{rid}/status")]
        tally.record("poller", results_lost=len(unpolled), undocumented_5xx=tally.undocumented_5xx(statuses))
        assert unpolled == [], f"{len(unpolled)} requests behind the oldest {_PAGE} were never polled"
    finally:
        gateway.stop()
