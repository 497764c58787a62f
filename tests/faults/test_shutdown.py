"""SIGTERM and SIGKILL of the gateway mid-job, on SQLite and on Redis: after a restart every job fal took
ends recorded with its result, and nothing is refunded that fal ran (or charged twice).

SIGTERM while fal is still answering the submits (the emulator's `delay` fault holds them past the
shutdown grace): uvicorn cancels those requests, but fal has the bytes and runs the jobs, so their answer
must be awaited and recorded. SIGKILL once fal has accepted the jobs: the restarted gateway's poller
finds them and records their results.
"""

from __future__ import annotations

import signal
import tempfile
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
JOBS = 5
# The restarted gateway asks fal about quiet requests at once: their webhooks went to the old port.
RESTART_ENV = {"FALGATE_WEBHOOK_GRACE_SECONDS": "0.5", "FALGATE_POLL_INTERVAL_SECONDS": "0.5"}


@pytest.fixture
def fal() -> Iterator[Server]:
    server = start_emulator(job_seconds=1.0, FALGATE_EMULATOR_WEBHOOK_RETRIES="0")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tempfile.mkdtemp()}/falgate.db"
        return
    server = PrivateRedis()
    try:
        yield server.url
    finally:
        server.close()


def _gateway(fal: Server, store_url: str, **env: str) -> Server:
    return start_gateway(fal, FALGATE_STORE_URL=store_url, FALGATE_BUDGET_PER_DAY="1000", **env)


def _submits_at_fal(fal: Server) -> int:
    log = httpx.get(f"{fal.url}/_control/requests").json()
    return sum(1 for r in log if r["method"] == "POST" and r["path"] == f"/queue/{WAN_I2V}")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _cost_of_one(gateway: Server) -> float:
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        before = client.get("/v1/usage").json()["spent"]
        assert client.post(f"/{WAN_I2V}", json=BODY).status_code == 200
        return client.get("/v1/usage").json()["spent"] - before


def _after_restart(fal: Server, store_url: str, expected_jobs: int, cost: float, tally: Tally, statuses: list[int]):
    """Restart on the same store; count what was lost, refunded wrongly, delivered twice."""
    gateway = _gateway(fal, store_url, **RESTART_ENV)
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:

            def settled() -> bool:
                records = client.get("/v1/requests").json()["requests"]
                return len(records) >= expected_jobs and all(r["state"] == "COMPLETED" for r in records)

            _wait(settled, timeout=20)
            records = client.get("/v1/requests").json()["requests"]
            usage = client.get("/v1/usage").json()
        completed = sum(1 for r in records if r["state"] == "COMPLETED")
        lost = expected_jobs - completed
        wrong_refunds = round(abs(usage["spent"] - expected_jobs * cost) / cost) + usage["inflight"]
        duplicates = len(records) - len({r["request_id"] for r in records})
        tally.record(
            "shutdown",
            results_lost=lost,
            wrong_refunds=wrong_refunds,
            double_deliveries=duplicates,
            undocumented_5xx=tally.undocumented_5xx(statuses),
        )
        figures = (lost, wrong_refunds, duplicates, tally.undocumented_5xx(statuses))
        assert figures == (0, 0, 0, 0), (records, usage, statuses)
    finally:
        gateway.stop()


def test_sigterm_while_fal_is_answering_submits_records_them(fal: Server, store_url: str, tally: Tally) -> None:
    gateway = _gateway(fal, store_url, FALGATE_SHUTDOWN_GRACE_SECONDS="0.5")
    cost = _cost_of_one(gateway)
    # fal holds every submit's answer for 3 s, well past the 0.5 s grace.
    httpx.post(f"{fal.url}/_control/faults", json={"status": None, "delay": 3.0, "times": JOBS,
                                                  "path_contains": f"/queue/{WAN_I2V}", "method": "POST"})
    statuses: list[int] = []

    def submit(_: int) -> None:
        try:
            statuses.append(httpx.post(f"{gateway.url}/{WAN_I2V}", json=BODY, timeout=30).status_code)
        except httpx.HTTPError:
            pass  # the connection closed under shutdown: the caller never got an answer

    with ThreadPoolExecutor(JOBS) as pool:
        for i in range(JOBS):
            pool.submit(submit, i)
        assert _wait(lambda: _submits_at_fal(fal) == JOBS + 1, timeout=10)
        gateway.proc.send_signal(signal.SIGTERM)
        gateway.proc.wait(timeout=30)
    gateway.stop()
    # Each caller still got fal's answer: uvicorn's cancellation did not turn it into a 500.
    assert statuses == [200] * JOBS, statuses
    _after_restart(fal, store_url, JOBS + 1, cost, tally, statuses)


def test_sigkill_mid_job_then_restart_records_every_result(fal: Server, store_url: str, tally: Tally) -> None:
    gateway = _gateway(fal, store_url)
    cost = _cost_of_one(gateway)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        statuses = [client.post(f"/{WAN_I2V}", json=BODY).status_code for _ in range(JOBS)]
    assert statuses == [200] * JOBS
    gateway.proc.send_signal(signal.SIGKILL)  # while fal runs the jobs (1 s each)
    gateway.proc.wait(timeout=10)
    gateway.stop()
    _after_restart(fal, store_url, JOBS + 1, cost, tally, statuses)
