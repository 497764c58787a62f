"""Client webhook delivery against a real HTTP receiver on 127.0.0.1, signatures checked by `standardwebhooks`.

The SSRF tests watch every socket connect the event loop makes (`connects`): a refused target must cost
no connect at all, and a name must only ever be connected to at an address that was checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpcore
import httpx
import pytest
import pytest_asyncio
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.net.safe_transport import AddressRefused, PublicOnlyBackend, PublicOnlyTransport
from app.relay.client_webhooks import (
    MAX_ATTEMPTS,
    TargetRefused,
    WebhookSender,
    check_secret,
    new_secret,
    next_delay,
    sign,
    validate_target_url,
)
from tests.relay_helpers import ThreadServer
from tests.servers import free_port

# Not a canonical JSON rendering, and not ASCII: any re-encoding on the way would show.
BODY = (
    '{"request_id": "req-1",  "status":"OK", "payload": {"video": {"url": "https://x/v.mp4"}, "caption": "caf\u00e9 \u2603"}}\n'
).encode()
PUBLIC_IP = "93.184.216.34"  # never actually connected to: `connects` refuses every non-loopback connect


@dataclass
class Receiver:
    server: ThreadServer
    hits: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _start_receiver() -> Receiver:
    hits: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                for name, value in {"content-length": str(len(body)), **(headers or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the sender stopped reading (big answer) or gave up (slow answer): as intended

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path == "/fail":
                self._answer(500, b"boom")
            elif self.path == "/redirect":
                self._answer(302, headers={"location": f"http://127.0.0.1:{self.server.server_address[1]}/hook"})
            elif self.path == "/slow":
                time.sleep(1.5)
                self._answer(204)
            elif self.path == "/big":
                self._answer(200, b"x" * 5_000_000)
            elif self.path == "/cookie":
                self._answer(204, headers={"set-cookie": "session=s3cr3t; Path=/"})
            else:
                self._answer(204)

        do_POST = do_GET = do_PUT = _handle  # noqa: N815

    server = ThreadServer(Handler)
    server.httpd.block_on_close = False  # type: ignore[attr-defined] - close() need not wait for /slow
    return Receiver(server, hits)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = _start_receiver()
    yield rec
    rec.server.close()


@pytest_asyncio.fixture(loop_scope="function")
async def connects(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[Any]]:
    """Every address a socket connect was attempted to. Non-loopback ones are refused, never sent."""
    loop = asyncio.get_running_loop()
    attempted: list[Any] = []
    original = loop.sock_connect

    async def guarded(sock: socket.socket, address: Any) -> None:
        attempted.append(address[:2])
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"the test refuses connects to non-loopback {address}")
        await original(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)
    yield attempted


@dataclass
class FakeDNS:
    """Answers for the names in `answers` (one list per lookup, the last one repeated); others resolve as usual."""

    answers: dict[str, list[list[str]]]
    failing: set[str] = field(default_factory=set)  # names that do not resolve at all
    lookups: list[str] = field(default_factory=list)


@pytest_asyncio.fixture(loop_scope="function")
async def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    loop = asyncio.get_running_loop()
    fake = FakeDNS({})
    original = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if isinstance(host, bytes):  # anyio passes IDNA-encoded bytes
            return await getaddrinfo(host.decode("ascii"), port, *args, **kwargs)
        if host in fake.failing:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host not in fake.answers:
            return await original(host, port, *args, **kwargs)
        fake.lookups.append(host)
        rounds = fake.answers[host]
        addresses = rounds[min(fake.lookups.count(host), len(rounds)) - 1]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port))
            for a in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return fake


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
        ("http://192.168.1.20:{port}/hook", "private"),
        ("http://100.64.0.1/hook", "CGNAT"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fe80::1]:{port}/hook", "link-local"),
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


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:7f00:1]", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("169.254.169.254", "metadata"),
        ("2130706433", "non-canonical"),
    ],
)
async def test_the_transport_itself_refuses_literal_addresses(
    receiver: Receiver, connects: list[Any], host: str, reason: str
) -> None:
    """The pool's own check, without WebhookSender's early one in front of it."""
    async with httpx.AsyncClient(transport=PublicOnlyTransport()) as client:
        with pytest.raises(AddressRefused, match=reason):
            await client.post(f"http://{host}:{receiver.port}/hook", content=BODY)
    assert connects == [] and receiver.hits == []


async def test_a_dns_answer_that_changes_between_check_and_connect_is_never_followed(
    public_only: WebhookSender, receiver: Receiver, connects: list[Any], dns: FakeDNS
) -> None:
    """DNS rebinding: the name answers a public address when checked, then 127.0.0.1 (the receiver)."""
    dns.answers["rebind.test"] = [[PUBLIC_IP], ["127.0.0.1"]]
    first = await public_only.send(f"http://rebind.test:{receiver.port}/hook", _signed(new_secret()), BODY)
    # The connect went to the address the check saw, and only there: no second lookup was made.
    assert receiver.hits == []
    assert connects == [(PUBLIC_IP, receiver.port)]
    assert dns.lookups == ["rebind.test"]
    assert not first.ok and first.error == "connection_failed: ConnectError"
    # The next attempt looks the name up again, sees 127.0.0.1, and refuses without connecting.
    second = await public_only.send(f"http://rebind.test:{receiver.port}/hook", _signed(new_secret()), BODY)
    assert second.error == "target_refused: the host resolves to a loopback address"
    assert dns.lookups == ["rebind.test", "rebind.test"] and connects == [(PUBLIC_IP, receiver.port)]
    assert receiver.hits == []


async def test_only_public_answers_are_kept_in_order(dns: FakeDNS) -> None:
    dns.answers["mixed.test"] = [["10.1.2.3", PUBLIC_IP, "::ffff:169.254.169.254", "2606:2800:220:1::1", PUBLIC_IP]]
    dns.answers["internal.test"] = [["127.0.0.1", "fd00:ec2::254"]]
    dns.answers["nothing.test"] = [[]]
    backend = PublicOnlyBackend()
    assert await backend.resolve("mixed.test", 443) == [PUBLIC_IP, "2606:2800:220:1::1"]
    with pytest.raises(AddressRefused, match="resolves to a loopback address"):
        await backend.resolve("internal.test", 443)
    with pytest.raises(AddressRefused, match="resolves to no address"):
        await backend.resolve("nothing.test", 443)


class _HandshakeRecorder(httpcore.AsyncNetworkBackend):
    """Stands in for the socket layer: records what it was asked to connect to and the TLS handshake's name."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []
        self.handshakes: list[tuple[str | None, bool, ssl.VerifyMode]] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        recorder = self

        class Stream(httpcore.AsyncNetworkStream):
            async def start_tls(
                self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
            ) -> httpcore.AsyncNetworkStream:
                recorder.handshakes.append((server_hostname, ssl_context.check_hostname, ssl_context.verify_mode))
                raise httpcore.ConnectError("the test stops at the handshake")

            async def aclose(self) -> None:
                pass

        return Stream()


async def test_tls_is_verified_against_the_url_host_not_the_address(dns: FakeDNS) -> None:
    dns.answers["hooks.rebind.test"] = [[PUBLIC_IP]]
    recorder = _HandshakeRecorder()
    async with httpx.AsyncClient(transport=PublicOnlyTransport(inner_backend=recorder)) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("https://hooks.rebind.test/hook", content=BODY)
    assert recorder.connects == [(PUBLIC_IP, 443)]
    assert recorder.handshakes == [("hooks.rebind.test", True, ssl.CERT_REQUIRED)]


async def test_unresolvable_name_is_a_failed_attempt_not_a_refusal(public_only: WebhookSender, dns: FakeDNS) -> None:
    dns.failing.add("does-not-exist.test")
    result = await public_only.send("https://does-not-exist.test/hook", {}, BODY)
    assert not result.ok and result.error == "connection_failed: the host name does not resolve"


# ---- deliveries to a real receiver ------------------------------------------------------------------


async def test_delivery_to_loopback_when_private_is_allowed(private_ok: WebhookSender, receiver: Receiver) -> None:
    secret = new_secret()
    for target in (receiver.url(), receiver.url(host="localhost")):
        result = await private_ok.send(target, _signed(secret), BODY)
        assert result.ok and result.status_code == 204 and result.error is None, result
    assert len(receiver.hits) == 2
    path, headers, body = receiver.hits[0]
    assert path == "/hook" and body == BODY
    assert headers["user-agent"] == "falgate-webhooks" and headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(BODY))
    assert Webhook(secret).verify(body, headers) == json.loads(BODY)


async def test_proxy_settings_in_the_environment_are_ignored(
    private_ok: WebhookSender, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = _start_receiver()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url(path=""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        sender = WebhookSender(allow_private=True, timeout=2.0)
        try:
            assert (await sender.send(receiver.url(), {}, BODY)).ok
        finally:
            await sender.aclose()
        assert proxy.hits == [] and [path for path, _, _ in receiver.hits] == ["/hook"]
    finally:
        proxy.server.close()


async def test_cookies_are_never_kept(private_ok: WebhookSender, receiver: Receiver) -> None:
    assert (await private_ok.send(receiver.url("/cookie"), {}, BODY)).ok
    assert (await private_ok.send(receiver.url("/hook"), {}, BODY)).ok
    assert [path for path, _, _ in receiver.hits] == ["/cookie", "/hook"]
    assert "cookie" not in receiver.hits[1][1]


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
    assert not result.ok and result.status_code is None and result.error == "connection_failed: ConnectError"


async def test_malformed_url_never_raises(private_ok: WebhookSender) -> None:
    for url in ("not a url", "http://[::1/", "http://h:99999/", "http:///x", "ftp://h/x"):
        result = await private_ok.send(url, {}, BODY)
        assert not result.ok and (result.error or "").startswith("target_refused: "), (url, result)


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
