"""Local stand-ins for FCM, APNs and Web Push that check what the real services check.

- FCM: the token endpoint verifies the service account's RS256 JWT grant (issuer, audience = its own
  token URI, the firebase.messaging scope, lifetime) and issues an access token; messages:send accepts
  only tokens it issued.
- APNs: HTTP/2 only, over TLS with a certificate from a test CA (trustme); it verifies the ES256
  provider token (kid, team id, age), the apns-topic header and the payload's `aps.alert`.
- Web Push: the test plays the browser (a P-256 key pair and an auth secret); the service checks the
  VAPID JWT (ES256, audience = its origin, expiry within 24 h, subject) and decrypts the RFC 8291 body.

Each records the notifications it accepted; `fail_first` answers fail (503 + Retry-After) before
success, and tokens in `dead` are answered as the real service answers a dead token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.relay_helpers import ThreadServer, _Quiet

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# The audience Google's token endpoint requires of a grant, whichever URL it was posted to.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Tally:
    """What a stand-in saw: every attempt's status, and the notifications it accepted."""

    fail_first: int = 0
    dead: set[str] = field(default_factory=set)
    attempts: list[tuple[float, int]] = field(default_factory=list)  # (at, status answered)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)  # why a request was refused (a test bug or ours)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, token: str) -> int:
        """The status for the next attempt (before its content is accepted)."""
        with self.lock:
            failing = sum(1 for _, s in self.attempts if s == 503) < self.fail_first
            status = 410 if token in self.dead else (503 if failing else 200)
            self.attempts.append((time.time(), status))
            return status

    def wait_accepted(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.accepted) >= count:
                return list(self.accepted)
            time.sleep(0.05)
        raise AssertionError(f"accepted {len(self.accepted)}, wanted {count}; refusals {self.refusals}")

    def wait_attempts(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.attempts) < count:
            time.sleep(0.05)
        assert len(self.attempts) >= count, f"{len(self.attempts)} attempts, wanted {count}; {self.refusals}"


def _reply(handler: Any, status: int, body: dict | None = None, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode() if body is not None else b""
    handler.send_response(status)
    for name, value in {"content-type": "application/json", "content-length": str(len(raw)), **(headers or {})}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(raw)


class FcmStandin(ThreadServer):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.project = "falgate-test-project"
        self.client_email = "falgate@falgate-test-project.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self.issued: set[str] = set()
        standin = self

        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/token":
                    standin._token(self, body)
                elif self.path == f"/v1/projects/{standin.project}/messages:send":
                    standin._send(self, body)
                else:
                    _reply(self, 404, {"error": {"status": "NOT_FOUND"}})

        super().__init__(Handler)
        self.token_uri = f"{self.url}/token"

    def write_credentials(self) -> str:
        path = os.path.join(tempfile.mkdtemp(), "service-account.json")
        with open(path, "w") as f:
            json.dump(
                {
                    "type": "service_account",
                    "project_id": self.project,
                    "private_key_id": "k1",
                    "private_key": self.private_key_pem,
                    "client_email": self.client_email,
                    "client_id": "1234",
                    "token_uri": self.token_uri,
                },
                f,
            )
        return path

    def _token(self, handler: Any, body: bytes) -> None:
        form = urllib.parse.parse_qs(body.decode())
        try:
            assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"], "grant_type"
            claims = jwt.decode(
                form["assertion"][0], self._key.public_key(), algorithms=["RS256"], audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=self.client_email, options={"require": ["exp", "iat", "aud", "iss", "scope"]},
            )
            assert FCM_SCOPE in claims["scope"].split(), "scope"
            assert claims["exp"] - claims["iat"] <= 3600, "lifetime"
        except (AssertionError, KeyError, jwt.PyJWTError) as exc:
            self.tally.refusals.append(f"token grant: {exc!r}")
            _reply(handler, 400, {"error": "invalid_grant"})
            return
        token = "ya29.standin-" + secrets.token_urlsafe(24)
        self.issued.add(token)
        _reply(handler, 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _send(self, handler: Any, body: bytes) -> None:
        auth = handler.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.issued:
            self.tally.refusals.append("messages:send without an issued token")
            _reply(handler, 401, {"error": {"status": "UNAUTHENTICATED"}})
            return
        message = json.loads(body)["message"]
        status = self.tally.answer(message["token"])
        if status == 410:
            detail = {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
            _reply(handler, 404, {"error": {"code": 404, "status": "NOT_FOUND", "details": [detail]}})
        elif status == 503:
            _reply(handler, 503, {"error": {"status": "UNAVAILABLE"}}, {"retry-after": "1"})
        else:
            assert all(isinstance(v, str) for v in message["data"].values())
            self.tally.accepted.append(message)
            _reply(handler, 200, {"name": f"projects/{self.project}/messages/{secrets.token_hex(8)}"})


class ApnsStandin:
    """hypercorn, HTTP/2 only, on TLS from a trustme CA; `ca_file` is what FALGATE_PUSH_CA_FILE points at."""

    def __init__(self, tally: Tally) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        self.tally = tally
        self.key_id, self.team_id, self.topic = "ABC123DEFG", "TEAM123456", "com.example.falgate"
        key = ec.generate_private_key(ec.SECP256R1())
        self._public = key.public_key()
        directory = tempfile.mkdtemp()
        self.key_file = os.path.join(directory, f"AuthKey_{self.key_id}.p8")
        with open(self.key_file, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = os.path.join(directory, "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        cert_file, key_pem = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        cert.cert_chain_pems[0].write_to_path(cert_file)
        cert.private_key_pem.write_to_path(key_pem)
        from tests.servers import free_port

        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.certfile, config.keyfile = cert_file, key_pem
        config.alpn_protocols = ["h2"]
        config.accesslog = config.errorlog = None
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(started.set)
            self._loop.run_until_complete(serve(self._app, config, shutdown_trigger=self._stop.wait))

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(5)
        time.sleep(0.5)

    async def _app(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, reply = self._handle(scope, body)
        raw = json.dumps(reply).encode() if reply else b""
        await send({"type": "http.response.start", "status": status, "headers": [(b"apns-id", b"x"), (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})

    def _handle(self, scope: dict, body: bytes) -> tuple[int, dict | None]:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        try:
            assert scope["http_version"] == "2", "APNs speaks HTTP/2 only"
            assert scope["method"] == "POST" and scope["path"].startswith("/3/device/"), "path"
            scheme, _, token = headers.get("authorization", "").partition(" ")
            assert scheme == "bearer", "authorization scheme"
            assert jwt.get_unverified_header(token)["kid"] == self.key_id, "kid"
            claims = jwt.decode(token, self._public, algorithms=["ES256"], issuer=self.team_id, options={"require": ["iat", "iss"]})
            assert time.time() - claims["iat"] < 3600, "provider token too old"
            assert headers.get("apns-topic") == self.topic, "topic"
            assert headers.get("apns-push-type") == "alert", "push type"
            payload = json.loads(body)
            assert payload["aps"]["alert"]["title"] and payload["aps"]["alert"]["body"], "alert"
        except (AssertionError, KeyError, ValueError, jwt.PyJWTError) as exc:
            self.tally.refusals.append(f"apns: {exc!r}")
            return 403, {"reason": "InvalidProviderToken"}
        status = self.tally.answer(scope["path"][len("/3/device/") :])
        if status == 410:
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        if status == 503:
            return 503, {"reason": "ServiceUnavailable"}
        self.tally.accepted.append(payload)
        return 200, None

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)


@dataclass
class Browser:
    """A browser's push subscription: the key pair and auth secret only it holds."""

    endpoint: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self) -> dict:
        point = self.key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"endpoint": self.endpoint, "expirationTime": None, "keys": {"p256dh": _b64url(point), "auth": _b64url(self.auth)}}


class WebPushStandin(ThreadServer):
    def __init__(self, tally: Tally, subject: str) -> None:
        self.tally = tally
        self.subject = subject
        self.browsers: dict[str, Browser] = {}
        self.vapid_public_key: str | None = None  # set by the test from /v1/push/vapid-public-key
        standin = self

        class Handler(_Quiet):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, headers = standin._handle(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                _reply(self, status, None, headers)

        super().__init__(Handler)

    def browser(self) -> Browser:
        name = secrets.token_urlsafe(12)
        browser = Browser(f"{self.url}/push/{name}")
        self.browsers[name] = browser
        return browser

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str] | None]:
        name = path.rpartition("/")[2]
        browser = self.browsers.get(name)
        if browser is None:
            return 404, None
        try:
            assert headers.get("content-encoding") == "aes128gcm", "content-encoding"
            assert int(headers["ttl"]) >= 0, "TTL"
            scheme, _, params = headers["authorization"].partition(" ")
            assert scheme == "vapid", "vapid scheme"
            fields = dict(part.strip().split("=", 1) for part in params.split(","))
            assert fields["k"] == self.vapid_public_key, "the VAPID key browsers subscribed with"
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64url_decode(fields["k"]))
            claims = jwt.decode(fields["t"], public, algorithms=["ES256"], audience=self.url, options={"require": ["exp", "aud", "sub"]})
            assert claims["exp"] - time.time() <= 86400, "VAPID exp more than 24 h away"
            assert claims["sub"] == self.subject, "subject"
        except (AssertionError, KeyError, ValueError, jwt.PyJWTError) as exc:
            self.tally.refusals.append(f"webpush: {exc!r}")
            return 403, None
        status = self.tally.answer(name)
        if status == 410:
            return 410, None
        if status == 503:
            return 429, {"retry-after": "1"}
        try:
            plain = http_ece.decrypt(body, private_key=browser.key, auth_secret=browser.auth, version="aes128gcm")
        except Exception as exc:  # noqa: BLE001 - any decryption failure is the sender's bug
            self.tally.refusals.append(f"webpush decrypt: {exc!r}")
            return 400, None
        self.tally.accepted.append(json.loads(plain))
        return 201, None
