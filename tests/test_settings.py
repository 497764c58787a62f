"""Configuration: invalid settings stop the gateway with a clear message; no key means the emulator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import leak_checked_client
from tests.invalid_bodies import VALID_BODIES
from tests.servers import ROOT, Server, free_port, wait_completed_flow


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env={**clean, "FALGATE_PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"FALGATE_UPSTREAM": "live"}, "FAL_KEY"),
        ({"FAL_KEY": "k:s", "FALGATE_FAL_QUEUE_URL": "not a url"}, "FALGATE_FAL_QUEUE_URL"),
        ({"FAL_KEY": "k:s", "FALGATE_FAL_RUN_URL": "ftp://fal.run"}, "FALGATE_FAL_RUN_URL"),
        ({"FAL_KEY": "k:s", "FALGATE_PORT": "99999"}, "port"),
        ({"FAL_KEY": "k:s", "FALGATE_UPSTREAM": "sideways"}, "upstream"),
    ],
)
def test_invalid_setting_refuses_to_start(env: dict[str, str], needle: str) -> None:
    done = _serve(env)
    assert done.returncode != 0
    assert "invalid configuration" in done.stderr
    assert needle in done.stderr
    assert "Traceback" not in done.stderr


def test_no_key_runs_the_embedded_emulator_end_to_end() -> None:
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
    server = Server(
        "gateway-emulated",
        [sys.executable, "-m", "app.cli", "serve"],
        port,
        {**clean, "FALGATE_PORT": str(port), "FALGATE_EMULATOR_JOB_SECONDS": "0.5"},
    )
    try:
        server.wait_ready()
        assert "emulator" in server.output.lower()
        with leak_checked_client(server.url) as client:
            assert client.get("/healthz").json()["upstream"] == "emulator"
            wait_completed_flow(client, "fal-ai/wan-i2v", VALID_BODIES["fal-ai/wan-i2v"])
    finally:
        server.stop()
