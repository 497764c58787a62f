"""Client webhook delivery against a real HTTP receiver on 127.0.0.1, signatures checked by `standardwebhooks`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.relay.client_webhooks import (
    MAX_ATTEMPTS,
    TargetRefused,
    WebhookSender,
    _PublicOnlyResolver,
    check_secret,
    new_secret,
    next_delay,
    sign,
    validate_target_url,
)
from tests.servers import free_port

BODY = json.dumps({"request_id": "req-1", "status": "OK", "payload": {"video": {"url": "https://x/v.mp4"}}}).encode()


@dataclass
class Receiver:
    port: int
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest_asyncio.fixture(loop_scope="function")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(free_port())

    async def handle(request: web.Request) -> web.StreamResponse:
        rec.hits.append((request.path, dict(request.headers), await request.read()))
        if request.path == "/fail":
            return web.Response(status=500, text="boom")
        if request.path == "/redirect":
            raise web.HTTPFound(f"http://127.0.0.1:{rec.port}/hook")
        if request.path == "/slow":
            await asyncio.sleep(3)
        if request.path == "/big":
            return web.Response(body=b"x" * 5_000_000)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", rec.port).start()
    yield rec
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="function")
async def connects(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Any]]:
    """Every address a socket connect was attempted to. Anything non-loopback is blocked, never sent."""
    loop = asyncio.get_running_loop()
    attempted: list[Any] = []
    original = loop.sock_connect

    async def guarded(sock: socket.socket, address: Any) -> None:
        attempted.append(address)
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise AssertionError(f"test tried to connect to non-loopback {address}")
        await original(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)
    yield attempted


@pytest_asyncio.fixture(loop_scope="function")
async def public_only() -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(allow_private=False, timeout=2.0)
    yield sender
    await sender.aclose()


@pytest_asyncio.fixture(loop_scope="function")
async def private_ok() -> AsyncIterator[WebhookSender]:
    sender = WebhookSender(allow_private=True, timeout=0.5)
    yield sender
    await sender.aclose()


def _signed(secret: str, msg_id: str = "msg_1") -> dict[str, str]:
    return sign(secret, msg_id, int(time.time()), BODY)


# ---- signing -----------------------------------------------------------------------------------------


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = new_secret()
    headers = _signed(secret)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_secrets() -> None:
    first, second = new_secret(), new_secret()
    assert first != second and first.startswith("whsec_")
    check_secret(first)
    check_secret("whsec_" + "A" * 32)  # 24 bytes, the minimum
    for bad, words in [
        ("A" * 44, "whsec_"),
        ("whsec_not*base64", "base64"),
        ("whsec_" + "A" * 28, "24 bytes"),
        ("whsec_", "24 bytes"),
    ]:
        with pytest.raises(ValueError, match=words):
            check_secret(bad)
    with pytest.raises(ValueError):
        sign("whsec_short", "m", 1, b"")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/x", "https"),
        ("ftp://hooks.example.com/x", r"http\(s\)"),
        ("https:///x", "no host"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://hooks.example.com/\n", "control"),
        ("https://hooks.example.com:99999/", "not a valid URL"),
        ("https://hooks.example.com/" + "a" * 3000, "too long"),
        ("https://127.0.0.1/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "loopback"),
        ("https://10.0.0.1/", "private"),
        ("https://169.254.169.254/latest/meta-data", "metadata"),
        ("https://2130706433/", "non-canonical"),
        ("https://localhost/", "localhost"),
    ],
)
def test_validate_target_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(TargetRefused, match=reason):
        validate_target_url(url)


def test_validate_target_url_accepts() -> None:
    assert validate_target_url("https://hooks.example.com/fal?token=a") == "https://hooks.example.com/fal?token=a"
    assert validate_target_url("https://8.8.8.8:8443/x") == "https://8.8.8.8:8443/x"
    assert validate_target_url("http://127.0.0.1:8000/hook", allow_private=True) == "http://127.0.0.1:8000/hook"
    with pytest.raises(TargetRefused):
        validate_target_url("https://u:p@127.0.0.1/", allow_private=True)  # syntax rules still apply


# ---- SSRF refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://127.0.0.1:{port}/hook", "loopback"),
        ("http://localhost:{port}/hook", "loopback"),
        ("http://10.0.0.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::1]:{port}/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/hook", "loopback"),
        ("http://0.0.0.0:{port}/hook", "unspecified"),
        ("http://2130706433:{port}/hook", "non-canonical"),
        ("http://[64:ff9b::7f00:1]:{port}/hook", "NAT64"),
    ],
)
async def test_non_public_targets_are_refused_before_connecting(
    public_only: WebhookSender, receiver: Receiver, connects: list[Any], target: str, reason: str
) -> None:
    result = await public_only.send(target.format(port=receiver.port), _signed(new_secret()), BODY)
    assert not result.ok and result.status_code is None
    assert result.error is not None and result.error.startswith("target_refused: ") and reason in result.error
    assert result.duration_ms < 1000
    assert connects == [] and receiver.hits == []


async def test_resolver_keeps_only_public_answers() -> None:
    """A name answering with a mix keeps only the public addresses; all-internal answers are refused."""

    class FakeResolver:
        def __init__(self) -> None:
            self.answers: list[str] = []

        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict[str, Any]]:
            return [
                {"hostname": host, "host": a, "port": port, "family": 0, "proto": 0, "flags": 0} for a in self.answers
            ]

    resolver = _PublicOnlyResolver()
    fake = FakeResolver()
    resolver._inner = fake  # type: ignore[assignment]
    fake.answers = ["10.1.2.3", "93.184.216.34", "::ffff:169.254.169.254", "2606:2800:220:1::1"]
    kept = await resolver.resolve("rebind.example", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34", "2606:2800:220:1::1"]
    fake.answers = ["127.0.0.1", "fd00:ec2::254"]
    with pytest.raises(OSError, match="loopback"):
        await resolver.resolve("rebind.example", 443)


# ---- deliveries to a real receiver ------------------------------------------------------------------


async def test_delivery_to_loopback_when_private_is_allowed(private_ok: WebhookSender, receiver: Receiver) -> None:
    secret = new_secret()
    for target in (receiver.url(), receiver.url(host="localhost")):
        result = await private_ok.send(target, _signed(secret), BODY)
        assert result.ok and result.status_code == 204 and result.error is None, result
    path, headers, body = receiver.hits[0]
    assert path == "/hook" and body == BODY
    assert headers["User-Agent"] == "falgate-webhooks" and headers["Content-Type"] == "application/json"
    assert Webhook(secret).verify(body, headers) == json.loads(BODY)


async def test_error_status_is_a_failed_attempt(private_ok: WebhookSender, receiver: Receiver) -> None:
    result = await private_ok.send(receiver.url("/fail"), _signed(new_secret()), BODY)
    assert not result.ok and result.status_code == 500 and result.error == "http_status: 500"


async def test_redirect_is_not_followed(private_ok: WebhookSender, receiver: Receiver) -> None:
    result = await private_ok.send(receiver.url("/redirect"), _signed(new_secret()), BODY)
    assert not result.ok and result.status_code == 302 and "redirect" in (result.error or "")
    assert [path for path, _, _ in receiver.hits] == ["/redirect"]


async def test_slow_receiver_times_out(private_ok: WebhookSender, receiver: Receiver) -> None:
    result = await private_ok.send(receiver.url("/slow"), _signed(new_secret()), BODY)
    assert not result.ok and result.status_code is None and result.error == "timeout"
    assert 400 <= result.duration_ms < 2000


async def test_big_answer_is_not_read_whole(private_ok: WebhookSender, receiver: Receiver) -> None:
    result = await private_ok.send(receiver.url("/big"), _signed(new_secret()), BODY)
    assert result.ok and result.status_code == 200


async def test_unreachable_target_is_a_failed_attempt(private_ok: WebhookSender) -> None:
    result = await private_ok.send(f"http://127.0.0.1:{free_port()}/hook", {}, BODY)
    assert not result.ok and result.status_code is None and (result.error or "").startswith("connection_failed")


async def test_malformed_url_never_raises(private_ok: WebhookSender) -> None:
    result = await private_ok.send("not a url", {}, BODY)
    assert not result.ok and (result.error or "").startswith("target_refused: ")


# ---- retry schedule ------------------------------------------------------------------------------------


class _Extreme(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def _schedule(rng: random.Random) -> list[float]:
    delays: list[float] = []
    attempt = 1
    while (delay := next_delay(attempt, rng)) is not None:
        delays.append(delay)
        attempt += 1
    return delays


def test_schedule_covers_a_day_and_gives_up() -> None:
    shortest, longest = _schedule(_Extreme(0.0)), _schedule(_Extreme(0.999999))
    assert len(shortest) == len(longest) == MAX_ATTEMPTS - 1
    assert sum(shortest) >= 24 * 3600  # even with the least jitter
    assert sum(longest) <= 40 * 3600
    assert shortest[:4] == [5.0, 10.0, 20.0, 40.0] and max(longest) <= 1.5 * 3600
    assert next_delay(MAX_ATTEMPTS) is None and next_delay(1000) is None
    with pytest.raises(ValueError):
        next_delay(0)


def test_schedule_is_jittered() -> None:
    runs = [_schedule(random.Random(seed)) for seed in range(20)]
    assert all(sum(run) >= 24 * 3600 for run in runs)
    for attempt in (1, 5, 20):
        values = {run[attempt - 1] for run in runs}
        assert len(values) == len(runs)  # every run waits a different time
        gap = min(5.0 * 2 ** (attempt - 1), 3600.0)
        assert all(gap <= v <= 1.5 * gap for v in values)
