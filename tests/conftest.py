"""Shared fixtures: a real emulator and a real gateway on free ports, and clients that watch for leaks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.servers import (
    ALL_GATEWAY_OUTPUT,
    CANARY_CALLER_KEY,
    CANARY_FAL_KEY,
    CANARY_REFUSED_KEY,
    Server,
    start_emulator,
    start_gateway,
)

CANARY_PARTS = (CANARY_FAL_KEY, CANARY_FAL_KEY.split(":", 1)[1])
# Callers' keys may be echoed to their own caller (nothing does today), but never printed to a log.
LOG_CANARY_PARTS = (*CANARY_PARTS, CANARY_CALLER_KEY, CANARY_REFUSED_KEY)


def assert_no_canary(response: httpx.Response) -> None:
    """Fails the test if the fal key shows up anywhere in what a caller received."""
    response.read()
    blob = response.content + repr(list(response.headers.raw)).encode()
    for part in CANARY_PARTS:
        assert part.encode() not in blob, f"FAL_KEY leaked in a response to {response.request.url}"


def leak_checked_client(base_url: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=30, event_hooks={"response": [assert_no_canary]}, **kwargs)


class Upstream:
    """The emulator's record of what reached "fal", and its fault switches."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url

    def requests(self) -> list[dict]:
        return httpx.get(f"{self.url}/_control/requests").json()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/_control/requests")

    def count(self) -> int:
        return len(self.requests())

    def fault(self, **spec) -> None:
        httpx.post(f"{self.url}/_control/faults", json=spec).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.url}/_control/faults")


@pytest.fixture(scope="session")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=1.0, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def upstream(emulator: Server) -> Upstream:
    return Upstream(emulator)


@pytest.fixture(scope="session")
def gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(emulator)
    yield server
    server.stop()


@pytest.fixture
def client(gateway: Server, upstream: Upstream) -> Iterator[httpx.Client]:
    upstream.clear_faults()
    with leak_checked_client(gateway.url) as c:
        yield c


def wait_completed(client: httpx.Client, status_url: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(status_url, params={"logs": 1})
        body = response.json()
        if body.get("status") == "COMPLETED":
            assert response.status_code == 200
            return body
        assert response.status_code == 202, response.text
        time.sleep(0.1)
    raise AssertionError(f"{status_url} did not complete in {timeout}s")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The canary keys (fal's and callers') must never have been printed by any gateway in the whole run."""
    leaked = [line for line in ALL_GATEWAY_OUTPUT if any(part in line for part in LOG_CANARY_PARTS)]
    if leaked:
        print("\nA canary key was found in gateway output:\n" + "".join(leaked[:5]))
        session.exitstatus = 1


pytest_plugins = ["tests.store_backends"]


def pytest_terminal_summary(terminalreporter) -> None:
    # Imported here: the fault suite's tally is only filled when its tests ran.
    from tests.faults.tally import TALLY

    if TALLY.scenarios:
        terminalreporter.write_line(TALLY.summary())
