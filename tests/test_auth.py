"""Caller authentication (FALGATE_AUTH = none | api_key | jwt), over real HTTP.

Three layers:
- A small FastAPI app that uses `Authenticator.authenticate` as a dependency, served by uvicorn on a
  free port in a background thread, with a local JWKS server for RS256/ES256/EdDSA, key rotation and
  refetch rate limiting.
- The real gateway process (the `TestGateway*` classes): these need the authenticator wired into the
  gateway's request pipeline.
- Unit level: FALGATE_API_KEYS parsing edge cases; `falgate keys new` through a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import Depends, FastAPI
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from app.callers.authenticator import Authenticator, Caller
from app.emulator.control import MASKED_KEY
from app.errors import GatewayError, Unauthorized, install_error_handlers
from app.responses import JSONResponse
from app.settings import Settings
from tests.conftest import Upstream
from tests.invalid_bodies import KLING, VALID_BODIES
from tests.servers import ROOT, Server, free_port, start_gateway

ALICE_KEY = "fg_" + secrets.token_urlsafe(32)
BOB_KEY = "fg_" + secrets.token_urlsafe(32)
WRONG_KEY = "fg_" + secrets.token_urlsafe(32)
BOB_DIGEST = hashlib.sha256(BOB_KEY.encode()).hexdigest()
API_KEYS = f"alice:{ALICE_KEY}, bob:sha256:{BOB_DIGEST}"

SECRET = "hs256-test-secret-" + secrets.token_urlsafe(32)
ISSUER = "https://issuer.example"
AUDIENCE = "falgate-tests"
UNTRUSTED_ONLY = "10.9.9.9"  # forwarded_allow_ips under which 127.0.0.1 is not a trusted proxy
SPOOFED_IP = "203.0.113.7"


# --------------------------------------------------------------------------- the served test app


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def current_caller(conn: HTTPConnection) -> Caller:
    return await conn.app.state.auth.authenticate(conn)


CallerDep = Annotated[Caller, Depends(current_caller)]


async def whoami(caller: CallerDep) -> dict[str, str]:
    return {"id": caller.id, "method": caller.method}


def _auth_app(settings: Settings, **auth_kwargs: Any) -> FastAPI:
    """Routes that only authenticate and say who the caller is, the way the gateway is meant to."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.auth = Authenticator.from_settings(settings, **auth_kwargs)
        try:
            yield
        finally:
            await app.state.auth.aclose()

    app = FastAPI(lifespan=lifespan)
    install_error_handlers(app)

    for path in ("/whoami", "/v1/requests/{request_id}/events"):
        app.add_api_route(path, whoami, methods=["GET", "POST"])

    @app.websocket("/v1/ws")
    async def ws_query_token(ws: WebSocket) -> None:
        # As app/relay/sinks.py does: the handshake is authenticated like any request, before accept().
        try:
            caller = await ws.app.state.auth.authenticate(ws)
        except GatewayError as exc:
            # Refuse the handshake with the same JSON 401 an HTTP route gives.
            await ws.send_denial_response(JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers))
            return
        await ws.accept()
        await ws.send_json({"id": caller.id, "method": caller.method})
        await ws.close()

    return app


@contextmanager
def serve_auth_app(settings: Settings, *, forwarded_allow_ips: str = UNTRUSTED_ONLY, **auth_kwargs: Any) -> Iterator[str]:
    """The test app on a free port, run by uvicorn (proxy headers on, as `falgate serve` runs it)."""
    port = free_port()
    config = uvicorn.Config(
        _auth_app(settings, **auth_kwargs),
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _connection(token: str | None, client_host: str | None = "10.0.0.1") -> HTTPConnection:
    """A request as the gateway's routes see it, with `token` as its bearer token (no server needed)."""
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    client = None if client_host is None else (client_host, 50000)
    return HTTPConnection({"type": "http", "method": "GET", "path": "/whoami", "query_string": b"", "headers": headers, "client": client})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _whoami(url: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers.update(_bearer(token))
    return httpx.get(f"{url}/whoami", headers=headers, timeout=10, **kwargs)


def assert_401(response: httpx.Response, error: str | None, *secrets_: str) -> None:
    """RFC 6750's challenge, a JSON {"detail"} body, and none of the presented secrets echoed."""
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str) and body["detail"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="falgate"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert challenge == f'Bearer realm="falgate", error="{error}"'
    for secret in secrets_:
        assert secret not in response.text
        assert secret not in repr(response.headers.raw)


# --------------------------------------------------------------------------- a JWKS server and keys


class JWKSServer:
    """Serves {"keys": self.keys} on a free port and counts every fetch."""

    def __init__(self, keys: list[dict[str, Any]] | None = None) -> None:
        self.keys: list[dict[str, Any]] = list(keys or [])
        self.status = 200
        self.fetches = 0
        self.delay = 0.0  # seconds each answer takes, so that concurrent requests can queue behind a fetch
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/.well-known/jwks.json"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with jwks._lock:
                    jwks.fetches += 1
                    status, body = jwks.status, json.dumps({"keys": jwks.keys}).encode()
                time.sleep(jwks.delay)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    yield server
    server.close()


def _claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set; an override of None removes that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "user-123", "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE}
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any
    to_jwk: Callable[..., Any]

    def jwk(self) -> dict[str, Any]:
        return {**self.to_jwk(self.private.public_key(), as_dict=True), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def token(self, kid: str | None = "", **claims: Any) -> str:
        headers = {"kid": self.kid if kid == "" else kid} if kid is not None else {}
        return jwt.encode(_claims(**claims), self.private, algorithm=self.alg, headers=headers)


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm.to_jwk)


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm.to_jwk)


def ed_key(kid: str) -> SigningKey:
    return SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm.to_jwk)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade_token(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT built by hand, for what PyJWT refuses to produce: alg none, HMAC keyed with a public key."""
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


def _relabelled(token: str, **header_changes: Any) -> str:
    """The token with its header edited and its signature kept (so it no longer matches)."""
    header, rest = token.split(".", 1)
    decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    return f"{_b64url(json.dumps({**decoded, **header_changes}).encode())}.{rest}"


def _hs256(claims: dict[str, Any] | None = None, secret: str = SECRET) -> str:
    return jwt.encode(claims if claims is not None else _claims(), secret, algorithm="HS256")


def _jwks_settings(jwks: JWKSServer, **values: Any) -> Settings:
    return _settings(auth="jwt", jwt_jwks_url=jwks.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **values)


def _get_many(url: str, tokens: list[str], workers: int = 16) -> list[httpx.Response]:
    with httpx.Client(timeout=20) as client, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda token: client.get(f"{url}/whoami", headers=_bearer(token)), tokens))


# --------------------------------------------------------------------------- api_key


@pytest.fixture(scope="module")
def api_key_app() -> Iterator[str]:
    with serve_auth_app(_settings(auth="api_key", api_keys=API_KEYS)) as url:
        yield url


@pytest.mark.parametrize(("key", "caller_id"), [(ALICE_KEY, "alice"), (BOB_KEY, "bob")], ids=["plain", "sha256"])
def test_api_key_authenticates_plain_and_sha256_entries(api_key_app: str, key: str, caller_id: str) -> None:
    response = _whoami(api_key_app, key)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": caller_id, "method": "api_key"}


def test_api_key_bearer_scheme_is_case_insensitive(api_key_app: str) -> None:
    response = httpx.get(f"{api_key_app}/whoami", headers={"Authorization": f"bearer   {ALICE_KEY}"})
    assert response.json() == {"id": "alice", "method": "api_key"}


def test_api_key_wrong_key_is_401_invalid_token_and_not_echoed(api_key_app: str) -> None:
    assert_401(_whoami(api_key_app, WRONG_KEY), "invalid_token", WRONG_KEY)
    # A configured digest presented as if it were the key is just a wrong key.
    assert_401(_whoami(api_key_app, BOB_DIGEST), "invalid_token", BOB_DIGEST)


def test_api_key_missing_header_is_401_without_error_code(api_key_app: str) -> None:
    assert_401(_whoami(api_key_app), None)
    assert_401(httpx.post(f"{api_key_app}/whoami", json={}), None)


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (f"Basic {base64.b64encode(f'alice:{ALICE_KEY}'.encode()).decode()}", "invalid_request"),
        ("Bearer", "invalid_request"),
        (f"Token {ALICE_KEY}", "invalid_request"),
        (f"{ALICE_KEY}", "invalid_request"),
        (f"Bearer {ALICE_KEY} {ALICE_KEY}", "invalid_token"),
        ("Bearer " + "a" * 9000, "invalid_token"),
    ],
    ids=["basic", "bearer-nothing", "other-scheme", "no-scheme", "two-tokens", "oversized"],
)
def test_api_key_malformed_authorization_is_401(api_key_app: str, authorization: str, error: str) -> None:
    response = httpx.get(f"{api_key_app}/whoami", headers={"Authorization": authorization})
    assert_401(response, error, ALICE_KEY)


def test_api_key_two_authorization_headers_are_refused(api_key_app: str) -> None:
    headers = [("Authorization", f"Bearer {ALICE_KEY}"), ("Authorization", f"Bearer {BOB_KEY}")]
    assert_401(httpx.get(f"{api_key_app}/whoami", headers=headers), "invalid_request", ALICE_KEY, BOB_KEY)


def test_access_token_query_is_accepted_only_on_event_stream_gets(api_key_app: str) -> None:
    events = f"{api_key_app}/v1/requests/req-1/events"
    accepted = httpx.get(events, params={"access_token": ALICE_KEY})
    assert accepted.json() == {"id": "alice", "method": "api_key"}
    # Not on other paths, not on POST, not alongside a header, and a wrong one is an invalid token.
    assert_401(httpx.get(f"{api_key_app}/whoami", params={"access_token": ALICE_KEY}), "invalid_request", ALICE_KEY)
    assert_401(httpx.post(events, params={"access_token": ALICE_KEY}), "invalid_request", ALICE_KEY)
    both = httpx.get(events, params={"access_token": ALICE_KEY}, headers=_bearer(ALICE_KEY))
    assert_401(both, "invalid_request", ALICE_KEY)
    assert_401(httpx.get(events, params={"access_token": WRONG_KEY}), "invalid_token", WRONG_KEY)
    # A stray access_token is refused even next to a good header: it must not travel on in a URL.
    stray = httpx.get(f"{api_key_app}/whoami", params={"access_token": WRONG_KEY}, headers=_bearer(ALICE_KEY))
    assert_401(stray, "invalid_request", WRONG_KEY, ALICE_KEY)


def test_websocket_handshake_takes_access_token_query(api_key_app: str) -> None:
    ws_url = api_key_app.replace("http://", "ws://")
    with ws_connect(f"{ws_url}/v1/ws?access_token={ALICE_KEY}", open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"id": "alice", "method": "api_key"}
    with ws_connect(f"{ws_url}/v1/ws", additional_headers=_bearer(BOB_KEY), open_timeout=5) as ws:
        assert json.loads(ws.recv(timeout=5)) == {"id": "bob", "method": "api_key"}
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{ws_url}/v1/ws?access_token={WRONG_KEY}", open_timeout=5)
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="falgate", error="invalid_token"'
    assert WRONG_KEY.encode() not in response.body
    # No token at the handshake (a token meant to follow in a first message): refused, never accepted.
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"{ws_url}/v1/ws", open_timeout=5)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["www-authenticate"] == 'Bearer realm="falgate"'


def test_rejections_are_logged_without_the_token(api_key_app: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="falgate.auth")
    assert _whoami(api_key_app, WRONG_KEY).status_code == 401
    assert _whoami(api_key_app, ALICE_KEY).status_code == 200
    deadline = time.monotonic() + 2
    while "Invalid API key" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "Invalid API key" in caplog.text
    assert WRONG_KEY not in caplog.text and ALICE_KEY not in caplog.text


# --------------------------------------------------------------------------- jwt: HS256


@pytest.fixture(scope="module")
def hs256_app() -> Iterator[str]:
    settings = _settings(auth="jwt", jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_leeway_seconds=5)
    with serve_auth_app(settings) as url:
        yield url


def test_jwt_hs256_accepted_and_caller_is_sub(hs256_app: str) -> None:
    response = _whoami(hs256_app, _hs256(_claims(sub="auth0|abc-42")))
    assert response.status_code == 200, response.text
    assert response.json() == {"id": "auth0|abc-42", "method": "jwt"}


def _alg_none_token() -> str:
    return _handmade_token({"alg": "none", "typ": "JWT"}, _claims(), None)


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: _hs256(_claims(exp=int(time.time()) - 120)), "expired"),
        (lambda: _hs256(_claims(aud="someone-else")), "audience"),
        (lambda: _hs256(_claims(aud=None)), "'aud'"),
        (lambda: _hs256(_claims(iss="https://evil.example")), "issuer"),
        (lambda: _hs256(secret="another-secret-of-the-same-length-" + "y" * 20), "signature"),
        (_alg_none_token, "algorithm"),
        (lambda: _hs256(_claims(sub=None)), "'sub'"),
        (lambda: _hs256(_claims(exp=None)), "'exp'"),
        (lambda: _hs256(_claims(sub="   ")), "sub"),
        (lambda: _hs256(_claims(nbf=int(time.time()) + 600)), "not valid yet"),
        (lambda: "not.a.jwt", "Malformed"),
    ],
    ids=[
        "expired",
        "wrong-audience",
        "no-audience",
        "wrong-issuer",
        "wrong-signature",
        "alg-none",
        "missing-sub",
        "missing-exp",
        "blank-sub",
        "not-yet-valid",
        "garbage",
    ],
)
def test_jwt_hs256_rejections(hs256_app: str, make_token: Callable[[], str], reason: str) -> None:
    token = make_token()
    response = _whoami(hs256_app, token)
    assert_401(response, "invalid_token", token)
    assert reason in response.json()["detail"]


def test_jwt_leeway_tolerates_small_clock_skew(hs256_app: str) -> None:
    response = _whoami(hs256_app, _hs256(_claims(exp=int(time.time()) - 2)))  # leeway is 5 s here
    assert response.status_code == 200, response.text


def test_jwt_hs256_refuses_a_jwks_algorithm_without_jwks(hs256_app: str) -> None:
    token = ec_key("k1").token()
    assert_401(_whoami(hs256_app, token), "invalid_token", token)


async def test_jwt_without_configured_audience_or_issuer_ignores_them() -> None:
    auth = Authenticator.from_settings(_settings(auth="jwt", jwt_secret=SECRET))
    caller = await auth.authenticate(_connection(_hs256(_claims(aud="anyone", iss=None))))
    assert caller == Caller(id="user-123", method="jwt")
    await auth.aclose()


def test_jwt_secret_shorter_than_32_bytes_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes") as refused:
        Authenticator.from_settings(_settings(auth="jwt", jwt_secret="too-short-secret"))
    assert "too-short-secret" not in str(refused.value)


# --------------------------------------------------------------------------- jwt: JWKS


def test_jwks_rs256_es256_and_eddsa_accepted(jwks: JWKSServer) -> None:
    keys = [rsa_key("rsa-1"), ec_key("ec-1"), ed_key("ed-1")]
    jwks.keys = [key.jwk() for key in keys]
    with serve_auth_app(_jwks_settings(jwks)) as url:
        for key in keys:
            response = _whoami(url, key.token(sub=f"user-{key.alg}"))
            assert response.json() == {"id": f"user-{key.alg}", "method": "jwt"}, key.alg
        # A token signed by a key absent from the set, with a known kid, does not verify.
        impostor = rsa_key("rsa-1").token()
        assert_401(_whoami(url, impostor), "invalid_token", impostor)
    assert jwks.fetches == 1  # one fetch served all of them


def test_jwks_token_without_kid_needs_a_single_candidate_key(jwks: JWKSServer) -> None:
    only_ec, first_rsa, second_rsa = ec_key("ec-1"), rsa_key("rsa-1"), rsa_key("rsa-2")
    jwks.keys = [only_ec.jwk(), first_rsa.jwk(), second_rsa.jwk()]
    with serve_auth_app(_jwks_settings(jwks)) as url:
        assert _whoami(url, only_ec.token(kid=None)).status_code == 200
        ambiguous = first_rsa.token(kid=None)
        assert_401(_whoami(url, ambiguous), "invalid_token", ambiguous)


def test_jwks_algorithm_confusion_is_refused(jwks: JWKSServer) -> None:
    signer = rsa_key("rsa-1")
    hmac_secret = secrets.token_bytes(32)
    # A JWKS that (wrongly) also publishes a symmetric key must not make HS256 tokens acceptable.
    jwks.keys = [signer.jwk(), {"kty": "oct", "kid": "hmac-1", "alg": "HS256", "k": _b64url(hmac_secret)}]
    public_pem = signer.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    forged = [
        _handmade_token({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, _claims(), public_pem),
        _handmade_token({"alg": "HS256", "typ": "JWT", "kid": "hmac-1"}, _claims(), hmac_secret),
        _handmade_token({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, _claims(), None),
        _handmade_token({"alg": "RS384", "typ": "JWT", "kid": "rsa-1"}, _claims(), None),
        # An ES256 signature by another key, relabelled RS256 and pointed at the RSA key.
        _relabelled(ec_key("rsa-1").token(), alg="RS256"),
    ]
    with serve_auth_app(_jwks_settings(jwks)) as url:
        for token in forged:
            assert_401(_whoami(url, token), "invalid_token", token)
        assert _whoami(url, signer.token()).status_code == 200


def test_jwks_key_rotation_is_picked_up_on_unknown_kid(jwks: JWKSServer) -> None:
    old, new = rsa_key("2024-old"), rsa_key("2025-new")
    jwks.keys = [old.jwk()]
    cooldown = 0.3
    with serve_auth_app(_jwks_settings(jwks), jwks_cooldown_seconds=cooldown) as url:
        assert _whoami(url, old.token()).json()["id"] == "user-123"
        assert jwks.fetches == 1

        jwks.keys = [new.jwk()]  # the provider rotates: new key, new kid, old key withdrawn
        time.sleep(cooldown + 0.1)
        response = _whoami(url, new.token(sub="after-rotation"))
        assert response.json() == {"id": "after-rotation", "method": "jwt"}
        assert jwks.fetches == 2  # the unknown kid caused exactly one refetch

        old_token = old.token()  # the withdrawn key no longer verifies anything
        assert_401(_whoami(url, old_token), "invalid_token", old_token)


def test_jwks_rotation_is_seen_by_every_request_that_waited_for_the_refetch(jwks: JWKSServer) -> None:
    old, new = rsa_key("2024-old"), rsa_key("2025-new")
    jwks.keys = [old.jwk()]
    cooldown = 1.0
    with serve_auth_app(_jwks_settings(jwks), jwks_cooldown_seconds=cooldown) as url:
        assert _whoami(url, old.token()).status_code == 200
        jwks.keys, jwks.delay = [new.jwk()], 0.3
        time.sleep(cooldown + 0.1)
        # The first unknown kid refetches; the rest wait on that fetch and must verify against its answer.
        responses = _get_many(url, [new.token(sub=f"u{n}") for n in range(20)], workers=20)
    assert [r.status_code for r in responses] == [200] * 20
    assert jwks.fetches == 2


def test_jwks_unknown_kid_flood_is_rate_limited(jwks: JWKSServer) -> None:
    signer = rsa_key("rsa-1")
    jwks.keys = [signer.jwk()]
    with serve_auth_app(_jwks_settings(jwks), jwks_cooldown_seconds=60) as url:
        assert _whoami(url, signer.token()).status_code == 200
        garbage = [signer.token(kid=f"garbage-{n}") for n in range(200)]
        responses = _get_many(url, garbage)
        assert all(r.status_code == 401 and "unknown key" in r.json()["detail"] for r in responses)
        assert jwks.fetches == 1  # inside the cooldown, 200 unknown kids cost no fetch at all
        assert _whoami(url, signer.token()).status_code == 200


def test_jwks_refetches_stay_bounded_under_a_sustained_flood(jwks: JWKSServer) -> None:
    signer = rsa_key("rsa-1")
    jwks.keys = [signer.jwk()]
    cooldown = 0.25
    tokens = [signer.token(kid=secrets.token_hex(8)) for _ in range(400)]
    with serve_auth_app(_jwks_settings(jwks), jwks_cooldown_seconds=cooldown) as url:
        started = time.monotonic()
        responses = _get_many(url, tokens)
        elapsed = time.monotonic() - started
    assert all(r.status_code == 401 for r in responses)
    # One fetch to start with, then at most one per cooldown, however many unknown kids arrive.
    assert 1 <= jwks.fetches <= 2 + elapsed / cooldown, (jwks.fetches, elapsed)
    assert jwks.fetches < len(tokens) / 10


def test_jwks_cold_cache_concurrent_requests_share_one_fetch(jwks: JWKSServer) -> None:
    signer = ec_key("ec-1")
    jwks.keys = [signer.jwk()]
    with serve_auth_app(_jwks_settings(jwks)) as url:
        responses = _get_many(url, [signer.token(sub=f"u{n}") for n in range(30)], workers=30)
    assert [r.status_code for r in responses] == [200] * 30
    assert jwks.fetches == 1


def test_jwks_unreachable_is_503_with_retry_after(jwks: JWKSServer) -> None:
    token = rsa_key("rsa-1").token()
    down = _settings(auth="jwt", jwt_jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json")
    jwks.status = 500
    for settings in (down, _jwks_settings(jwks)):
        with serve_auth_app(settings) as url:
            response = _whoami(url, token)
            assert response.status_code == 503, response.text
            assert "JWKS" in response.json()["detail"] and token not in response.text
            assert int(response.headers["retry-after"]) >= 1


def test_jwks_last_good_keys_survive_a_provider_outage(jwks: JWKSServer) -> None:
    signer = rsa_key("rsa-1")
    jwks.keys = [signer.jwk()]
    with serve_auth_app(_jwks_settings(jwks), jwks_ttl_seconds=0.2, jwks_cooldown_seconds=0.1) as url:
        assert _whoami(url, signer.token()).status_code == 200
        jwks.status = 500
        time.sleep(0.3)  # past the TTL: the next request tries to refresh, fails, keeps the old set
        assert _whoami(url, signer.token()).status_code == 200
        assert jwks.fetches == 2


def test_jwt_secret_and_jwks_together_accept_both(jwks: JWKSServer) -> None:
    signer = ed_key("ed-1")
    jwks.keys = [signer.jwk()]
    with serve_auth_app(_jwks_settings(jwks, jwt_secret=SECRET)) as url:
        assert _whoami(url, _hs256()).status_code == 200
        assert _whoami(url, signer.token()).status_code == 200


# --------------------------------------------------------------------------- none


def test_none_mode_caller_is_the_client_ip_and_spoofed_forwarded_for_is_ignored() -> None:
    with serve_auth_app(_settings(auth="none"), forwarded_allow_ips=UNTRUSTED_ONLY) as url:
        response = _whoami(url, headers={"X-Forwarded-For": SPOOFED_IP, "Authorization": f"Bearer {WRONG_KEY}"})
        assert response.json() == {"id": "127.0.0.1", "method": "none"}
        with ws_connect(url.replace("http://", "ws://") + "/v1/ws", additional_headers={"X-Forwarded-For": SPOOFED_IP}) as ws:
            assert json.loads(ws.recv(timeout=5)) == {"id": "127.0.0.1", "method": "none"}


def test_none_mode_honours_forwarded_for_from_a_trusted_proxy() -> None:
    # The other half of the contract: the caller id follows X-Forwarded-For only because uvicorn
    # (forwarded_allow_ips = FALGATE_TRUSTED_PROXIES) trusts the peer, not because the authenticator reads it.
    with serve_auth_app(_settings(auth="none"), forwarded_allow_ips="127.0.0.1") as url:
        response = _whoami(url, headers={"X-Forwarded-For": SPOOFED_IP})
        assert response.json() == {"id": SPOOFED_IP, "method": "none"}


# --------------------------------------------------------------------------- FALGATE_API_KEYS parsing


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nocolonSECRETSECRETSECRET", "entry 1 is not caller_id:key"),
        ("alice:KEYKEYKEYKEYKEYKEY01,:SECRETSECRETSECRET", "entry 2: the caller id"),
        ("al ice:SECRETSECRETSECRET", "entry 1: the caller id"),
        ("alice,x:SECRETSECRETSECRET", "entry 1 is not caller_id:key"),
        ("alice:sha256:" + "zz" * 32, "64 hex digits"),
        ("alice:sha256:abcdef", "64 hex digits"),
        ("alice:SECRETshort", "at least 16 characters"),
        ("alice:SECRET with spaces SECRET", "may contain only"),
        ("alice:SECRETSECRETSECRET,bob:SECRETSECRETSECRET", "entries 1 and 2 have the same key"),
        (f"alice:SECRETSECRETSECRET,bob:sha256:{hashlib.sha256(b'SECRETSECRETSECRET').hexdigest()}", "same key"),
        (" , ,", "no entries"),
    ],
    ids=[
        "no-colon",
        "empty-caller",
        "bad-caller-chars",
        "key-with-comma",
        "bad-hex",
        "short-hex",
        "short-key",
        "key-with-spaces",
        "duplicate-key",
        "duplicate-key-across-forms",
        "empty",
    ],
)
def test_malformed_api_keys_stop_startup_without_quoting_keys(raw: str, message: str) -> None:
    with pytest.raises(ValueError) as refused:
        Authenticator.from_settings(_settings(auth="api_key", api_keys=raw))
    text = str(refused.value)
    assert message in text
    assert "SECRET" not in text and "zz" not in text and "abcdef" not in text


async def test_api_keys_allow_several_keys_per_caller_and_tolerate_spacing() -> None:
    first, second = "k1-" + "a" * 20, "k2-" + "b" * 20
    raw = f" alice : {first} ,, alice:sha256:{hashlib.sha256(second.encode()).hexdigest().upper()}, "
    auth = Authenticator.from_settings(_settings(auth="api_key", api_keys=raw))
    for key in (first, second):
        assert await auth.authenticate(_connection(key)) == Caller(id="alice", method="api_key")
    with pytest.raises(Unauthorized) as refused:
        await auth.authenticate(_connection(None))
    assert refused.value.headers == {"WWW-Authenticate": 'Bearer realm="falgate"'}


async def test_none_mode_caller_is_the_client_host() -> None:
    auth = Authenticator.from_settings(_settings(auth="none"))
    assert await auth.authenticate(_connection("ignored", "192.0.2.1")) == Caller(id="192.0.2.1", method="none")
    assert (await auth.authenticate(_connection(None, None))).id == "unknown"


# --------------------------------------------------------------------------- falgate keys new


def _keys_new(caller_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", "new", caller_id], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_keys_new_prints_a_key_and_an_entry_that_authenticates_it() -> None:
    run = _keys_new("alice")
    assert run.returncode == 0, run.stderr
    values = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    key, entry = values["key"], values["entry"]
    assert key.startswith("fg_") and len(key) >= 40
    assert entry.startswith("alice:sha256:") and key not in entry
    assert f"FALGATE_API_KEYS={entry}" in run.stderr
    assert _keys_new("alice").stdout != run.stdout  # fresh randomness every time

    with serve_auth_app(_settings(auth="api_key", api_keys=entry)) as url:
        assert _whoami(url, key).json() == {"id": "alice", "method": "api_key"}
        assert_401(_whoami(url, key + "x"), "invalid_token", key)


@pytest.mark.parametrize("caller_id", ["a:b", "a,b", "", ".alice", "al ice", "x" * 129])
def test_keys_new_refuses_a_bad_caller_id(caller_id: str) -> None:
    run = _keys_new(caller_id)
    assert run.returncode != 0
    assert "invalid caller id" in run.stderr and "key:" not in run.stdout


# --------------------------------------------------------------------------- the real gateway
# These need the authenticator wired into the gateway's request pipeline.


def _submit(gateway: Server, token: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", {}) | (_bearer(token) if token is not None else {})
    return httpx.post(f"{gateway.url}/{KLING}", json=VALID_BODIES[KLING], headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def api_key_gateway(emulator: Server) -> Iterator[Server]:
    # Debug level, so the log test also sees every line about rejected credentials.
    server = start_gateway(emulator, FALGATE_AUTH="api_key", FALGATE_API_KEYS=API_KEYS, FALGATE_LOG_LEVEL="debug")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(
        emulator, FALGATE_AUTH="jwt", FALGATE_JWT_SECRET=SECRET, FALGATE_JWT_ISSUER=ISSUER, FALGATE_JWT_AUDIENCE=AUDIENCE
    )
    yield server
    server.stop()


class TestGatewayApiKey:
    def test_submit_without_credentials_is_401_and_not_forwarded(self, api_key_gateway: Server, upstream: Upstream) -> None:
        upstream.clear()
        assert_401(_submit(api_key_gateway), None)
        assert_401(_submit(api_key_gateway, headers={"Authorization": "Basic YWxpY2U6eA=="}), "invalid_request")
        assert upstream.count() == 0

    def test_submit_with_wrong_key_is_401_and_not_forwarded(self, api_key_gateway: Server, upstream: Upstream) -> None:
        upstream.clear()
        assert_401(_submit(api_key_gateway, WRONG_KEY), "invalid_token", WRONG_KEY)
        assert upstream.count() == 0

    @pytest.mark.parametrize("key", [ALICE_KEY, BOB_KEY], ids=["plain", "sha256"])
    def test_submit_with_key_goes_upstream_with_the_fal_key_only(
        self, api_key_gateway: Server, upstream: Upstream, key: str
    ) -> None:
        upstream.clear()
        response = _submit(api_key_gateway, key)
        assert response.status_code == 200, response.text
        records = upstream.requests()
        assert [r["headers"]["authorization"] for r in records] == [MASKED_KEY]
        assert key not in json.dumps(records)

    def test_access_token_query_is_refused_on_submit(self, api_key_gateway: Server, upstream: Upstream) -> None:
        upstream.clear()
        assert_401(_submit(api_key_gateway, params={"access_token": ALICE_KEY}), "invalid_request", ALICE_KEY)
        assert upstream.count() == 0

    def test_list_requests_requires_a_key(self, api_key_gateway: Server) -> None:
        assert_401(httpx.get(f"{api_key_gateway.url}/v1/requests"), None)
        assert_401(httpx.get(f"{api_key_gateway.url}/v1/requests", headers=_bearer(WRONG_KEY)), "invalid_token", WRONG_KEY)
        listed = httpx.get(f"{api_key_gateway.url}/v1/requests", headers=_bearer(ALICE_KEY))
        assert listed.status_code == 200, listed.text
        assert ALICE_KEY not in listed.text

    def test_tokens_never_reach_the_gateway_logs(self, api_key_gateway: Server) -> None:
        for key in (ALICE_KEY, BOB_KEY, WRONG_KEY):
            _submit(api_key_gateway, key)
            httpx.get(f"{api_key_gateway.url}/v1/requests", headers=_bearer(key))
        time.sleep(0.3)
        output = api_key_gateway.output
        assert _submit(api_key_gateway).status_code == 401  # the auth is really on
        for key in (ALICE_KEY, BOB_KEY, WRONG_KEY):
            assert key not in output


class TestGatewayJwt:
    def test_submit_with_jwt(self, jwt_gateway: Server, upstream: Upstream) -> None:
        upstream.clear()
        token = _hs256(_claims(sub="browser-user"))
        response = _submit(jwt_gateway, token)
        assert response.status_code == 200, response.text
        assert token not in json.dumps(upstream.requests())

    @pytest.mark.parametrize(
        "token",
        [_hs256(_claims(exp=int(time.time()) - 600)), _hs256(_claims(aud="other")), _alg_none_token()],
        ids=["expired", "wrong-audience", "alg-none"],
    )
    def test_submit_with_bad_jwt_is_401(self, jwt_gateway: Server, upstream: Upstream, token: str) -> None:
        upstream.clear()
        assert_401(_submit(jwt_gateway, token), "invalid_token", token)
        assert upstream.count() == 0
        assert token not in jwt_gateway.output


def test_gateway_refuses_to_start_with_malformed_api_keys(emulator: Server) -> None:
    secret = "SECRET-never-printed-1234"
    try:
        server = start_gateway(emulator, FALGATE_AUTH="api_key", FALGATE_API_KEYS=f"alice:{secret},bob{secret}")
    except RuntimeError as exc:
        assert "FALGATE_API_KEYS entry 2" in str(exc)
        assert secret not in str(exc)
    else:
        server.stop()
        pytest.fail("the gateway started with a malformed FALGATE_API_KEYS")
