"""The fault suite: real faults (the emulator's fault controls, a private Redis killed or frozen, processes
sent SIGKILL/SIGTERM, receivers down) against the gateway under uvicorn. Prints one summary line."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import TALLY, Tally


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
