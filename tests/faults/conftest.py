"""The fault suite: real faults (the emulator's fault controls, a private Redis killed or frozen, processes
sent SIGKILL/SIGTERM, receivers down) against the gateway under uvicorn. Prints one summary line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.emulator_controls import FalControls
from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import TALLY, Tally
from tests.relay_helpers import Receiver
from tests.servers import Server


@pytest.fixture
def tally() -> Tally:
    return TALLY


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fal(emulator: Server) -> Iterator[FalControls]:
    """The emulator's fault and webhook controls, reset around each test (a leftover rule would leak)."""
    controls = FalControls(emulator)
    controls.reset()
    yield controls
    controls.reset()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A caller's webhook receiver (Standard Webhooks verified), which tests may take down and bring back."""
    server = Receiver()
    yield server
    server.close()
