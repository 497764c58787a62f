"""The real `@fal-ai/client` from npm, pointed at the gateway's proxy route, works unchanged.

The Node suite lives in tests/node (node's built-in test runner); this test starts nothing of its own
beyond the session's emulator and gateway, runs `node --test` against them and fails if Node does.
Node and the suite's modules are required: a machine without them fails here rather than skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.servers import Server

NODE_DIR = Path(__file__).resolve().parent / "node"
CLIENT_PACKAGE = NODE_DIR / "node_modules" / "@fal-ai" / "client" / "package.json"
TIMEOUT = 120.0


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the @fal-ai/client suite needs Node.js 20+ (then run `make node-deps`)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    major = int(re.match(r"v(\d+)", version).group(1))  # type: ignore[union-attr]
    assert major >= 20, f"Node.js 20+ is needed, found {version}"
    return node


def _check_modules() -> None:
    if not CLIENT_PACKAGE.exists():
        pytest.fail(f"{CLIENT_PACKAGE.parent} is missing: run `make node-deps` (npm ci in tests/node)")
    version = json.loads(CLIENT_PACKAGE.read_text())["version"]
    assert version.startswith("1.10."), f"tests/node has @fal-ai/client {version}, the suite is written for 1.10.x"


def _run_node(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run node, echoing its output line by line as it comes; returns (exit code, whole output)."""
    proc = subprocess.Popen(argv, cwd=NODE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)
        pytest.fail(f"node --test did not finish in {TIMEOUT}s:\n{''.join(lines)}")
    reader.join(timeout=5)
    return code, "".join(lines)


def _summary(output: str, name: str) -> int:
    # The TAP reporter closes with "# tests N", "# pass N", "# fail N", ...: take the last one.
    found = re.findall(rf"^# {name} (\d+)$", output, flags=re.MULTILINE)
    assert found, f"no '# {name} N' line in node's output"
    return int(found[-1])


def test_fal_client_js_suite(gateway: Server, emulator: Server) -> None:
    node = _node()
    _check_modules()
    files = sorted(p.name for p in NODE_DIR.glob("*.test.mjs"))
    assert files, f"no *.test.mjs in {NODE_DIR}"
    # Nothing fal- or gateway-related from our environment: the client must hold no credentials.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "FALGATE_"))}
    env.update(FALGATE_URL=gateway.url, FALGATE_EMULATOR_URL=emulator.url, NO_COLOR="1")

    started = time.monotonic()
    code, output = _run_node([node, "--test", "--test-reporter=tap", *files], env)
    print(f"node --test finished with exit code {code} in {time.monotonic() - started:.1f}s")

    assert code == 0, "the @fal-ai/client suite failed (its output is above)"
    assert _summary(output, "fail") == 0
    assert _summary(output, "pass") > 0
    assert _summary(output, "cancelled") == 0
    assert _summary(output, "skipped") == 0
