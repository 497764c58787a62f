"""Operations under hostile use: credentials in query strings never reach a log line (issue 11 item 14),
every caller-facing `/v1/*` route counts against the caller's limits (item 16), and start-up never
silently misroutes: live mode wants FALGATE_PUBLIC_URL, and the README's uvicorn command line is the same
gateway as `falgate serve` (item 20). Each against real gateways under uvicorn."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import LOG_CANARY_PARTS
from tests.faults.tally import Tally
from tests.servers import (
    CANARY_CALLER_KEY,
    CANARY_FAL_KEY,
    CANARY_REFUSED_KEY,
    ROOT,
    Server,
    emulator_env,
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
