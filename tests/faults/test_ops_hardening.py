"""Operations under hostile use: credentials in query strings never reach a log line (issue 11 item 14),
every caller-facing `/v1/*` route counts against the caller's limits (item 16), and start-up never
silently misroutes: live mode wants FALGATE_PUBLIC_URL, and the README's uvicorn command line is the same
gateway as `falgate serve` (item 20). Each against real gateways under uvicorn."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from app.settings import Settings
from tests.conftest import LOG_CANARY_PARTS
from tests.faults.tally import Tally
from tests.servers import (
    CANARY_CALLER_KEY,
    CANARY_FAL_KEY,
    CANARY_REFUSED_KEY,
    ROOT,
    Server,
    emulator_env,
    free_port,
    start_gateway,
)

STATUS_PATH = "/fal-ai/kling-video/requests/00000000-0000-4000-8000-000000000000/status"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _ws(server: Server) -> str:
    return server.url.replace("http://", "ws://")


def _wait_for(server: Server, needle: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in server.output and time.monotonic() < deadline:
        time.sleep(0.05)


def _leaked(server: Server) -> list[str]:
    return [line for line in server.lines if any(part in line for part in LOG_CANARY_PARTS)]


# --- item 14: credentials in query strings ---------------------------------------------------------------


def _credential_traffic(server: Server) -> list[int]:
    """A caller's key in every query string a client might put it in, accepted and refused: the statuses."""
    statuses: list[int] = []
    with ws_connect(f"{_ws(server)}/v1/ws?access_token={CANARY_CALLER_KEY}", open_timeout=5) as ws:
        ws.send('{"type": "ping"}')
        assert '"pong"' in ws.recv(timeout=5)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{_ws(server)}/v1/ws?access_token={CANARY_REFUSED_KEY}", open_timeout=5)
    statuses.append(refused.value.response.status_code)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for key in (CANARY_CALLER_KEY, CANARY_REFUSED_KEY):
            statuses.append(client.get(f"/v1/requests/{UNKNOWN_ID}/events", params={"access_token": key}).status_code)
            for name in ("token", "key", "api_key", "fal_key", "auth", "access_token"):
                statuses.append(client.get("/v1/models", params={"logs": "1", name: key}).status_code)
                statuses.append(client.get(STATUS_PATH, params={name: key}).status_code)
            statuses.append(client.get(f"{STATUS_PATH}?fal_key={CANARY_FAL_KEY}").status_code)
    return statuses


def test_callers_keys_in_query_strings_never_reach_a_log_line(emulator: Server, tally: Tally) -> None:
    server = start_gateway(
        emulator,
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=f"canary:{CANARY_CALLER_KEY}",
        FALGATE_LOG_LEVEL="debug",  # every level: uvicorn's debug lines carry URLs too
        FALGATE_LOG_FORMAT="json",
    )
    try:
        statuses = _credential_traffic(server)
        _wait_for(server, "[accepted]")
        _wait_for(server, '" 401')
    finally:
        server.stop()
    assert 401 in statuses
    # uvicorn did write both handshake lines, URL and all, and the key in them is scrubbed.
    assert 'WebSocket /v1/ws?access_token=***\\" [accepted]' in server.output, server.output[-3000:]
    assert 'WebSocket /v1/ws?access_token=***\\" 401' in server.output, server.output[-3000:]
    assert _leaked(server) == []
    tally.record("ops", undocumented_5xx=tally.undocumented_5xx(statuses))


# --- item 16: every /v1/* route is limited ---------------------------------------------------------------

_LIMIT_HEADERS = ("ratelimit-policy", "ratelimit", "retry-after")
# One caller per route: the read bucket is per caller, shared by every route of the class.
_READ_ROUTES = {
    "requests": ("GET", "/v1/requests"),
    "usage": ("GET", "/v1/usage"),
    "models": ("GET", "/v1/models"),
    "deliveries": ("GET", "/v1/webhooks/deliveries"),
    "events": ("GET", f"/v1/requests/{UNKNOWN_ID}/events"),
    "front": ("GET", STATUS_PATH),  # today's limited route, for comparison
}
_SUBMIT_ROUTES = {"redeliver": ("POST", "/v1/webhooks/deliveries/d-unknown/redeliver")}


def _key(name: str) -> str:
    return f"limitcaller-{name}-0123456789"


def test_every_caller_facing_route_counts_against_the_callers_limits(emulator: Server, tally: Tally) -> None:
    routes = {**_READ_ROUTES, **_SUBMIT_ROUTES, "ws": ("WS", "/v1/ws")}
    server = start_gateway(
        emulator,
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=",".join(f"{name}:{_key(name)}" for name in routes),
        FALGATE_RATE_LIMIT_READ="3/minute",
        FALGATE_RATE_LIMIT_SUBMIT="3/minute",
    )
    statuses: list[int] = []
    fourth: dict[str, httpx.Response] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for name, (method, path) in {**_READ_ROUTES, **_SUBMIT_ROUTES}.items():
                headers = {"Authorization": f"Bearer {_key(name)}"}
                answers = [client.request(method, path, headers=headers) for _ in range(4)]
                statuses += [answer.status_code for answer in answers]
                assert all(answer.status_code != 429 for answer in answers[:3]), (name, answers[:3])
                fourth[name] = answers[3]
        for _ in range(3):
            with ws_connect(f"{_ws(server)}/v1/ws", additional_headers={"Authorization": f"Bearer {_key('ws')}"}):
                pass
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"{_ws(server)}/v1/ws", additional_headers={"Authorization": f"Bearer {_key('ws')}"})
        statuses.append(refused.value.response.status_code)
        assert refused.value.response.status_code == 429
    finally:
        server.stop()
    front = fourth["front"]
    assert front.status_code == 429
    for name, answer in fourth.items():
        assert answer.status_code == 429, (name, answer.status_code, answer.text)
        assert "detail" in answer.json(), name
        assert all(header in answer.headers for header in _LIMIT_HEADERS), (name, dict(answer.headers))
        policy = "submit" if name in _SUBMIT_ROUTES else "read"
        assert answer.headers["ratelimit-policy"] == f'"{policy}";q=3;w=60', (name, answer.headers)
        assert answer.json()["detail"] == front.json()["detail"].replace("read", policy), name
    tally.record("ops", undocumented_5xx=tally.undocumented_5xx(statuses))


# --- item 20: start-up that silently misroutes -----------------------------------------------------------


def _start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
    return subprocess.run(argv, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=15)


def _readme_uvicorn_args() -> list[str]:
    """The README's `uvicorn app.main:app ...` command line, without the leading `uvicorn`."""
    line = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("uvicorn app.main:app")
    )
    return line.split()[1:]


def test_live_mode_without_public_url_refuses_to_start_naming_the_setting(emulator: Server, tally: Tally) -> None:
    live = {
        "FAL_KEY": CANARY_FAL_KEY,
        "FALGATE_ALLOW_ANONYMOUS": "true",
        "FALGATE_PORT": str(free_port()),
        "FALGATE_STORE_URL": f"sqlite:///{tempfile.mkdtemp()}/falgate.db",
        **emulator_env(emulator),
    }
    uvicorn_argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--port", live["FALGATE_PORT"]]
    for argv in ([sys.executable, "-m", "app.cli", "serve"], uvicorn_argv):
        finished = _start(argv, live)
        output = finished.stdout + finished.stderr
        assert finished.returncode != 0, output
        assert "FALGATE_PUBLIC_URL" in output, output
        assert CANARY_FAL_KEY.split(":", 1)[1] not in output
    # Emulator mode keeps its default: the embedded emulator posts its webhooks over loopback.
    port = str(free_port())
    store = f"sqlite:///{tempfile.mkdtemp()}/falgate.db"
    server = Server(
        "gateway", [sys.executable, "-m", "app.cli", "serve"], int(port), {"FALGATE_PORT": port, "FALGATE_STORE_URL": store}
    )
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            body = {"prompt": "a cat surfing a wave", "image_url": "https://example.com/cat.png"}
            submitted = client.post("/fal-ai/kling-video/v2.1/standard/image-to-video", json=body)
            assert submitted.status_code == 200, submitted.text
            assert submitted.json()["status_url"].startswith(server.url)
    finally:
        server.stop()
    tally.record("ops", undocumented_5xx=0)


def _behaviour(server: Server) -> dict[str, object]:
    """What an operator would compare between two launches: who the caller is behind a trusted proxy, what
    the logs look like and whether a key in a handshake URL reaches them, and how SIGTERM ends a stream."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        forwarded = client.get("/v1/usage", headers={"X-Forwarded-For": "203.0.113.7"}).json()["caller_id"]
        models = client.get("/v1/models", params={"access_token": CANARY_CALLER_KEY})
    with ws_connect(f"{_ws(server)}/v1/ws?access_token={CANARY_CALLER_KEY}", open_timeout=5) as ws:
        ws.send('{"type": "ping"}')
        ws.recv(timeout=5)
    _wait_for(server, "[accepted]")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    loggers = set()
    for line in server.lines:
        if line.startswith("{"):
            loggers.add(json.loads(line)["logger"])
        else:
            loggers.add("<not a JSON line>")
    return {
        "caller behind a trusted proxy": forwarded,
        "models": models.status_code,
        "loggers": sorted(loggers),
        "handshake line scrubbed": any("/v1/ws?access_token=***" in line for line in server.lines),
        "leaked": _leaked(server),
        "exit code": server.proc.returncode,
        "stopped within 5 s": time.monotonic() - started < 5,
    }


def test_readme_uvicorn_command_is_the_same_gateway_as_falgate_serve(emulator: Server, tally: Tally) -> None:
    args = _readme_uvicorn_args()
    # The README's flags are the options `falgate serve` gives uvicorn for the default settings.
    from uvicorn.main import main as uvicorn_cli

    readme = uvicorn_cli.make_context("uvicorn", list(args)).params
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert readme["host"] == defaults.host and readme["port"] == defaults.port
    assert readme["forwarded_allow_ips"] == defaults.trusted_proxies_csv and readme["proxy_headers"]
    assert readme["timeout_graceful_shutdown"] == defaults.shutdown_grace_seconds

    env = {"FALGATE_LOG_FORMAT": "json", "FALGATE_LOG_LEVEL": "debug"}
    behaviours = []
    # start_gateway appends its own --host and --port, which win over the README's (click keeps the last).
    for launch in ({}, {"uvicorn_args": args}):
        server = start_gateway(emulator, **launch, **env)
        try:
            behaviours.append(_behaviour(server))
        finally:
            server.stop()
    served, plain = behaviours
    assert served["caller behind a trusted proxy"] == "203.0.113.7"
    assert served["handshake line scrubbed"] and not served["leaked"]
    assert plain == served
    tally.record("ops", undocumented_5xx=0)
