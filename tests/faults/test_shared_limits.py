"""Two gateway replicas on one Redis hold one in-flight slot cap and one daily budget between them, under
concurrent submits spread over both."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import Tally
from tests.invalid_bodies import VALID_BODIES, WAN_I2V
from tests.servers import Server, start_emulator, start_gateway

BODY = VALID_BODIES[WAN_I2V]
CAP = 3
BUDGETED_JOBS = 5


@pytest.fixture
def fal() -> Iterator[Server]:
    server = start_emulator(job_seconds=2.0)
    yield server
    server.stop()


def _cost_of_one(fal: Server, redis_url: str) -> float:
    gateway = start_gateway(fal, FALGATE_STORE_URL=redis_url.replace("/0", "/1"), FALGATE_BUDGET_PER_DAY="1000")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            assert client.post(f"/{WAN_I2V}", json=BODY).status_code == 200
            return client.get("/v1/usage").json()["spent"]
    finally:
        gateway.stop()


def _burst(replicas: list[Server], n: int) -> list[int]:
    def submit(i: int) -> int:
        return httpx.post(f"{replicas[i % 2].url}/{WAN_I2V}", json=BODY, timeout=30).status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(submit, range(n)))


def test_two_replicas_share_one_slot_cap_and_one_budget(fal: Server, private_redis: PrivateRedis, tally: Tally) -> None:
    cost = _cost_of_one(fal, private_redis.url)
    budget = cost * BUDGETED_JOBS + cost / 2  # room for five jobs, not six
    env = {
        "FALGATE_STORE_URL": private_redis.url,
        "FALGATE_MAX_INFLIGHT": str(CAP),
        "FALGATE_BUDGET_PER_DAY": str(budget),
    }
    replicas = [start_gateway(fal, **env), start_gateway(fal, **env)]
    try:
        first = _burst(replicas, 10)
        # The refused get 429 (no slot) or, while the others' reservations are held, 402.
        assert first.count(200) == CAP and set(first) <= {200, 402, 429}, first
        usage = httpx.get(f"{replicas[0].url}/v1/usage").json()
        assert usage["inflight"] == CAP
        # Once fal's webhooks freed the slots, only the budget's remaining two jobs get through.
        deadline = time.monotonic() + 15
        while httpx.get(f"{replicas[1].url}/v1/usage").json()["inflight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        second = _burst(replicas, 10)
        assert sorted(second).count(200) == BUDGETED_JOBS - CAP, second
        assert set(second) <= {200, 402, 429}, second
        spent = httpx.get(f"{replicas[1].url}/v1/usage").json()["spent"]
        accepted = (first + second).count(200)
        over = max(0, accepted - BUDGETED_JOBS) + max(0, round((spent - accepted * cost) / cost))
        tally.record("store", wrong_refunds=over, undocumented_5xx=tally.undocumented_5xx(first + second))
        assert accepted == BUDGETED_JOBS and abs(spent - accepted * cost) < 1e-6, (accepted, spent)
    finally:
        for replica in replicas:
            replica.stop()
