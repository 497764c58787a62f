"""The real @fal-ai/client (tests/node) against endpoints configured with FALGATE_MODELS, through the
proxy route: tests/node/configured/configured-models.test.mjs, run by node's own test runner."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers import Server, start_gateway
from tests.test_configured_models import FIXTURES, KLING, VEO
from tests.test_fal_client_js import NODE_DIR, _check_modules, _node, _run_node, _summary


@pytest.fixture(scope="module")
def models_gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(emulator, FALGATE_MODELS=f"{KLING},{VEO}", FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"))
    yield server
    server.stop()


def test_configured_models_with_fal_ai_client(models_gateway: Server, emulator: Server) -> None:
    node = _node()
    _check_modules()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FALGATE_"))}
    env.update(FALGATE_URL=models_gateway.url, FALGATE_EMULATOR_URL=emulator.url, NO_COLOR="1")
    code, output = _run_node([node, "--test", "--test-reporter=tap", str(NODE_DIR / "configured" / "configured-models.test.mjs")], env)
    assert code == 0, "the @fal-ai/client suite for configured models failed (its output is above)"
    assert _summary(output, "fail") == 0 and _summary(output, "pass") == 3
