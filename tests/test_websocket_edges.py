"""WebSocket edges: binary frames, per-caller caps, refused handshakes kept out of the error log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.relay_helpers import KLING, KLING_BODY, auth_env, bearer, caller_keys
from tests.servers import Server, start_gateway

KEYS = caller_keys("pia", "quin")


@pytest.fixture(scope="module")
def gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(
        emulator, FALGATE_WS_MAX_SOCKETS_PER_CALLER="2", FALGATE_WS_MAX_SUBSCRIPTIONS="2", **auth_env(KEYS)
    )
    yield server
    server.stop()


def _ws_url(gateway: Server) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1/ws"


def _submit(gateway: Server, key: str) -> str:
    answer = httpx.post(f"{gateway.url}/{KLING}", json=KLING_BODY, headers=bearer(key), timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["request_id"]


def test_a_binary_frame_is_answered_and_the_socket_keeps_working(gateway: Server) -> None:
    async def scenario() -> list[dict]:
        async with websockets.connect(_ws_url(gateway), additional_headers=bearer(KEYS["pia"])) as ws:
            await ws.send(b"\x00\x01binary")
            first = json.loads(await ws.recv())
            await ws.send('{"type":"ping"}')
            return [first, json.loads(await ws.recv())]

    first, second = asyncio.run(scenario())
    assert first["type"] == "error" and "JSON" in first["detail"]
    assert second == {"type": "pong"}
    assert "KeyError" not in gateway.output and "Exception in ASGI application" not in gateway.output


def test_sockets_and_subscriptions_are_capped_per_caller(gateway: Server) -> None:
    rids = [_submit(gateway, KEYS["quin"]) for _ in range(3)]

    async def scenario() -> tuple[int, dict, list[str]]:
        headers = bearer(KEYS["quin"])
        async with websockets.connect(_ws_url(gateway), additional_headers=headers) as one:
            async with websockets.connect(_ws_url(gateway), additional_headers=headers):
                with pytest.raises(InvalidStatus) as refused:
                    await websockets.connect(_ws_url(gateway), additional_headers=headers)
                # Another caller is not affected by quin's sockets.
                async with websockets.connect(_ws_url(gateway), additional_headers=bearer(KEYS["pia"])):
                    pass
            kinds = []
            for rid in rids:
                await one.send(json.dumps({"type": "subscribe", "request_id": rid}))
                while True:
                    message = json.loads(await one.recv())
                    if message.get("request_id") == rid and message["type"] in ("subscribed", "error"):
                        kinds.append(message["type"])
                        last = message
                        break
        # The socket count falls when sockets close: a new one is accepted again.
        async with websockets.connect(_ws_url(gateway), additional_headers=headers):
            pass
        return refused.value.response.status_code, last, kinds

    status, last, kinds = asyncio.run(scenario())
    assert status == 429
    assert kinds == ["subscribed", "subscribed", "error"] and last["status"] == 429, last


def test_a_refused_handshake_is_not_an_error_level_line(gateway: Server) -> None:
    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(_ws_url(gateway))
        return refused.value.response.status_code

    assert asyncio.run(scenario()) == 401
    time.sleep(0.3)
    errors = [line for line in gateway.output.splitlines() if '"level": "error"' in line]
    assert errors == [], errors


def test_sigterm_tells_open_sockets_to_reconnect(emulator: Server) -> None:
    """Sockets are told of the shutdown (one shared watcher, no per-socket polling) and closed with 1012."""
    keys = caller_keys("ray")
    server = start_gateway(emulator, FALGATE_SHUTDOWN_GRACE_SECONDS="5", **auth_env(keys))
    try:
        async def scenario() -> tuple[list[dict], int | None]:
            sockets = [await websockets.connect(_ws_url(server), additional_headers=bearer(keys["ray"])) for _ in range(3)]
            for ws in sockets:
                await ws.send('{"type":"ping"}')
                assert json.loads(await ws.recv()) == {"type": "pong"}
            server.proc.send_signal(signal.SIGTERM)
            told = []
            for ws in sockets:
                # Our "reconnect" message, unless uvicorn's own 1012 close got there first.
                with contextlib.suppress(websockets.ConnectionClosed):
                    told.append(json.loads(await asyncio.wait_for(ws.recv(), timeout=5)))
                await asyncio.wait_for(ws.wait_closed(), timeout=5)
            return told, [ws.close_code for ws in sockets]

        told, codes = asyncio.run(scenario())
        assert all(m["type"] == "reconnect" for m in told), told
        assert codes == [1012] * 3
    finally:
        server.stop()
