"""Real servers for the tests: the gateway and the fal emulator as child processes on free ports.

Every test talks to them over HTTP, exactly as a caller would. Their combined output is kept so that
tests can search the logs (the canary-key test reads every line the gateway ever printed).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CANARY_FAL_KEY = "canary-key-id:canary-secret-7f3a9c1e5b"
# Callers' keys that must never be printed either: one the gateway accepts (configure it as
# f"canary:{CANARY_CALLER_KEY}") and one it refuses. Both travel in query strings in the tests.
CANARY_CALLER_KEY = "callercanary-4d8e2b6f1a9c7e3d"
CANARY_REFUSED_KEY = "refusedcanary-9b1f5d3a7c2e8f40"

# Every line any gateway printed during the session, so the canary test can scan them all.
ALL_GATEWAY_OUTPUT: list[str] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A child process serving HTTP on 127.0.0.1:port, with its output captured line by line."""

    def __init__(self, name: str, argv: list[str], port: int, env: dict[str, str], collect: list[str] | None = None):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._collect = collect
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
        full_env.update(env)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if self._collect is not None:
                self._collect.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, path: str = "/healthz", timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready in {timeout}s:\n{self.output}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=2)


def start_emulator(key: str = CANARY_FAL_KEY, job_seconds: float = 1.0, **env: str) -> Server:
    port = free_port()
    server = Server(
        "emulator",
        [sys.executable, "-m", "app.cli", "emulator", "--port", str(port)],
        port,
        {"FAL_KEY": key, "FALGATE_EMULATOR_JOB_SECONDS": str(job_seconds), **env},
    )
    server.wait_ready("/healthz")
    return server


def emulator_env(emulator: Server) -> dict[str, str]:
    """The gateway settings that point every upstream host at a separately running emulator."""
    return {
        "FALGATE_UPSTREAM": "live",
        "FALGATE_FAL_QUEUE_URL": f"{emulator.url}/queue",
        "FALGATE_FAL_RUN_URL": f"{emulator.url}/run",
        "FALGATE_FAL_REST_URL": f"{emulator.url}/rest",
        "FALGATE_FAL_JWKS_URL": f"{emulator.url}/rest/.well-known/jwks.json",
    }


def start_gateway(
    emulator: Server | None = None,
    key: str = CANARY_FAL_KEY,
    *,
    app_factory: str | None = None,
    uvicorn_args: list[str] | None = None,
    **env: str,
) -> Server:
    """`falgate serve`, or uvicorn serving `app_factory` ("module:function") with the same settings, or
    uvicorn's own command line with `uvicorn_args` (the README's `uvicorn app.main:app ...`)."""
    port = free_port()
    full_env = {
        "FAL_KEY": key,
        "FALGATE_PORT": str(port),
        "FALGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        # The default suite runs without caller auth; tests of authentication set FALGATE_AUTH themselves.
        "FALGATE_ALLOW_ANONYMOUS": "true",
        "FALGATE_RATE_LIMIT_SUBMIT": "100000/minute",
        "FALGATE_RATE_LIMIT_READ": "100000/minute",
        "FALGATE_MAX_INFLIGHT": "100000",
        # Streams are served by the gateway itself: ping often so tests see keep-alives quickly.
        "FALGATE_SSE_PING_SECONDS": "0.2",
    }
    if emulator is not None:
        full_env.update(emulator_env(emulator))
    full_env["FALGATE_STORE_URL"] = env.pop("FALGATE_STORE_URL", f"sqlite:///{tempfile.mkdtemp()}/falgate.db")
    full_env.update(env)
    argv = [sys.executable, "-m", "app.cli", "serve"]
    if app_factory is not None:
        argv = [sys.executable, "-m", "uvicorn", app_factory, "--factory", "--host", "127.0.0.1", "--port", str(port)]
    if uvicorn_args is not None:
        argv = [sys.executable, "-m", "uvicorn", *uvicorn_args, "--host", "127.0.0.1", "--port", str(port)]
    server = Server(
        "gateway",
        argv,
        port,
        full_env,
        collect=ALL_GATEWAY_OUTPUT,
    )
    server.wait_ready("/healthz")
    return server


def wait_completed_flow(client: httpx.Client, model_id: str, body: dict, timeout: float = 20.0) -> dict:
    """Submit, poll the rewritten status URL to COMPLETED, fetch the result."""
    submitted = client.post(f"/{model_id}", json=body)
    assert submitted.status_code == 200, submitted.text
    urls = submitted.json()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(urls["status_url"])
        if status.json().get("status") == "COMPLETED":
            break
        time.sleep(0.1)
    else:
        raise AssertionError("request did not complete")
    result = client.get(urls["response_url"])
    assert result.status_code == 200, result.text
    return result.json()
