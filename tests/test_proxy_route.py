"""The `@fal-ai/client` proxy route over HTTP: hostile `x-fal-target-url` values and the protocol itself.

Every refused target must answer 400 with a JSON `detail` saying why, and nothing may reach "fal" (the
emulator's request log stays empty). The accepted ones must behave like fal: status codes kept, the
queue URLs fal hands out, the SSE status stream, the sync host.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import orjson
import pytest

from tests.conftest import leak_checked_client
from tests.invalid_bodies import HAILUO, KLING, LUMA, MAGI, PIXVERSE, VALID_BODIES, WAN_I2V
from tests.servers import Server, start_gateway

PROXY = "/api/fal/proxy"
TARGET = "x-fal-target-url"
Q = "https://queue.fal.run"
SUBMIT = f"{Q}/{WAN_I2V}"
REQUEST_ID = "0b9c2a52-3d4e-4f60-8a1b-2c3d4e5f6a7b"
STATUS = f"{Q}/{WAN_I2V}/requests/{REQUEST_ID}/status"
APP_ORIGIN = "http://app.example"

# Reasons, as words the refusal's `detail` must contain (case-insensitive regex).
HOST = "host"
SCHEME = "https"
PORT = "port"
CHARS = "encoded|escaped|credential"
SEGMENT = "segment"
NOT_SERVED = "not an operation|not a queue operation|is not a"
MODEL = "not a model|not an app"
MISSING = "missing"

# (id, method, target, reason). A target given as bytes is sent as raw header bytes.
HOSTILE: list[tuple[str, str, str | bytes | None, str]] = [
    # look-alike hosts
    ("suffix host", "POST", "https://queue.fal.run.evil.com/fal-ai/wan-i2v", HOST),
    ("prefix host", "POST", "https://evilqueue.fal.run/fal-ai/wan-i2v", HOST),
    ("dash host", "POST", "https://queue-fal.run/fal-ai/wan-i2v", HOST),
    ("other tld", "POST", "https://queue.fal.ru/fal-ai/wan-i2v", HOST),
    ("subdomain of rest", "POST", "https://evil.rest.fal.ai/storage/upload/initiate", HOST),
    # The parser compares hosts exactly and lowercase, as @fal-ai/client always sends them: other
    # spellings of the same host are refused rather than normalised.
    ("uppercase host", "POST", "https://QUEUE.FAL.RUN/fal-ai/wan-i2v", HOST),
    ("mixed-case host", "POST", "https://Queue.Fal.Run/fal-ai/wan-i2v", HOST),
    ("trailing-dot host", "POST", "https://queue.fal.run./fal-ai/wan-i2v", HOST),
    ("punycode host", "POST", "https://xn--queue-fal-run.com/fal-ai/wan-i2v", HOST),
    ("fullwidth dot (utf-8 bytes)", "POST", "https://queue.fal\u3002run/fal-ai/wan-i2v".encode(), HOST),
    ("roman-numeral l (utf-8 bytes)", "POST", "https://queue.fa\u217c.run/fal-ai/wan-i2v".encode(), HOST),
    ("encoded dot in host", "POST", "https://queue.fal.run%2eevil.com/fal-ai/wan-i2v", CHARS),
    # userinfo
    ("user:pass@", "POST", "https://user:pass@queue.fal.run/fal-ai/wan-i2v", CHARS),
    ("fal host as userinfo", "POST", "https://queue.fal.run@evil.com/fal-ai/wan-i2v", CHARS),
    ("bare @", "POST", "https://@queue.fal.run/fal-ai/wan-i2v", CHARS),
    ("backslash userinfo", "POST", "https://queue.fal.run\\@evil.com/fal-ai/wan-i2v", CHARS),
    # ports
    ("port 8443", "POST", "https://queue.fal.run:8443/fal-ai/wan-i2v", PORT),
    ("port 80", "POST", "https://queue.fal.run:80/fal-ai/wan-i2v", PORT),
    ("port 0", "POST", "https://queue.fal.run:0/fal-ai/wan-i2v", PORT),
    ("port out of range", "POST", "https://queue.fal.run:99999/fal-ai/wan-i2v", "not a URL"),
    ("port not a number", "POST", "https://queue.fal.run:https/fal-ai/wan-i2v", "not a URL"),
    # IP literals
    ("ipv4 loopback", "POST", "https://127.0.0.1/fal-ai/wan-i2v", HOST),
    ("ipv6 loopback", "POST", "https://[::1]/fal-ai/wan-i2v", CHARS),
    ("decimal ip", "POST", "https://2130706433/fal-ai/wan-i2v", HOST),
    ("metadata ip", "GET", "https://169.254.169.254/latest/meta-data/", HOST),
    # other schemes and shapes
    ("http", "POST", "http://queue.fal.run/fal-ai/wan-i2v", SCHEME),
    ("ftp", "POST", "ftp://queue.fal.run/fal-ai/wan-i2v", SCHEME),
    ("wss", "POST", "wss://queue.fal.run/fal-ai/wan-i2v", SCHEME),
    ("javascript", "POST", "javascript:alert(1)", SCHEME),
    ("file", "GET", "file:///etc/passwd", SCHEME),
    ("data", "POST", "data:text/plain,hello", SCHEME),
    ("scheme-relative", "POST", "//queue.fal.run/fal-ai/wan-i2v", SCHEME),
    ("path only", "POST", "/fal-ai/wan-i2v", SCHEME),
    ("https: without slashes", "POST", "https:queue.fal.run/fal-ai/wan-i2v", HOST),
    ("https:/// empty host", "POST", "https:///queue.fal.run/fal-ai/wan-i2v", HOST),
    ("no path", "POST", "https://queue.fal.run", "path"),
    ("root path", "POST", "https://queue.fal.run/", SEGMENT),
    # encoded, relative and odd paths
    ("encoded dot-dot", "POST", "https://queue.fal.run/fal-ai/%2e%2e/wan-i2v", CHARS),
    ("encoded slash", "POST", "https://queue.fal.run/fal-ai%2Fwan-i2v", CHARS),
    ("double-encoded dot-dot", "POST", "https://queue.fal.run/fal-ai/%252e%252e/wan-i2v", CHARS),
    ("encoded request id", "GET", f"{Q}/{WAN_I2V}/requests/..%2f/status", CHARS),
    ("dot-dot segment", "POST", "https://queue.fal.run/fal-ai/x/../wan-i2v", SEGMENT),
    ("dot segment", "POST", "https://queue.fal.run/fal-ai/./wan-i2v", SEGMENT),
    ("dot-dot after status", "GET", f"{STATUS}/../../x", SEGMENT),
    ("dot-dot to tokens", "POST", "https://rest.fal.ai/storage/upload/initiate/../../../tokens", SEGMENT),
    ("leading empty segment", "POST", "https://queue.fal.run//fal-ai/wan-i2v", SEGMENT),
    ("inner empty segment", "POST", "https://queue.fal.run/fal-ai//wan-i2v", SEGMENT),
    ("backslash", "POST", "https://queue.fal.run/fal-ai\\wan-i2v", CHARS),
    ("inner space", "POST", "https://queue.fal.run/fal-ai/wan i2v", CHARS),
    ("inner tab", "POST", "https://queue.fal.run/fal-ai/\twan-i2v", CHARS),
    ("non-ascii path (utf-8 bytes)", "POST", "https://queue.fal.run/fal-ai/wan-i2v\u00e9".encode(), SEGMENT),
    ("odd request id", "GET", f"{Q}/{WAN_I2V}/requests/abc$/status", SEGMENT),
    ("dotted request id", "GET", f"{Q}/{WAN_I2V}/requests/a.b/status", "request id"),
    # other fal paths
    ("rest admin", "GET", "https://rest.fal.ai/admin", NOT_SERVED),
    ("rest root", "POST", "https://rest.fal.ai/", SEGMENT),
    ("multipart upload", "POST", "https://rest.fal.ai/storage/upload/initiate-multipart", NOT_SERVED),
    ("upload initiate via GET", "GET", "https://rest.fal.ai/storage/upload/initiate", NOT_SERVED),
    ("tokens while minting is disabled", "POST", "https://rest.fal.ai/tokens/", "minting"),
    ("jwks through the proxy", "GET", "https://rest.alpha.fal.ai/.well-known/jwks.json", SEGMENT),
    ("requests without id", "GET", f"{Q}/fal-ai/kling-video/requests", NOT_SERVED),
    ("requests without app", "GET", f"{Q}/requests/{REQUEST_ID}/status", NOT_SERVED),
    ("request sub-resource", "GET", f"{Q}/{WAN_I2V}/requests/{REQUEST_ID}/logs", NOT_SERVED),
    ("nested requests", "GET", f"{Q}/{WAN_I2V}/requests/{REQUEST_ID}/requests/x", NOT_SERVED),
    ("run unknown model", "POST", "https://fal.run/fal-ai/unknown-model", MODEL),
    ("run stream path", "POST", "https://fal.run/fal-ai/wan-i2v/stream", MODEL),
    # unknown models and apps
    ("unknown model", "POST", "https://queue.fal.run/fal-ai/not-a-model", MODEL),
    ("model id prefix", "POST", "https://queue.fal.run/fal-ai/kling-video", MODEL),
    ("model id plus extra", "POST", f"{Q}/{KLING}/extra", MODEL),
    ("status of unknown app", "GET", f"{Q}/fal-ai/evil/requests/{REQUEST_ID}/status", MODEL),
    # wrong methods
    ("GET on submit", "GET", SUBMIT, "GET"),
    ("PUT on submit", "PUT", SUBMIT, "PUT"),
    ("PUT on status", "PUT", STATUS, NOT_SERVED),
    ("POST on status", "POST", STATUS, NOT_SERVED),
    ("GET on cancel", "GET", f"{Q}/{WAN_I2V}/requests/{REQUEST_ID}/cancel", NOT_SERVED),
    ("PUT on result", "PUT", f"{Q}/{WAN_I2V}/requests/{REQUEST_ID}", NOT_SERVED),
    ("GET on run", "GET", f"https://fal.run/{WAN_I2V}", "GET"),
    # the header itself
    ("missing header", "POST", None, MISSING),
    ("empty header", "POST", "", MISSING),
    ("10 KB header", "POST", SUBMIT + "?fal_webhook=https://example.com/" + "a" * 10_000, "too long"),
    ("garbage", "POST", "not a url at all", CHARS),
    ("garbage without spaces", "POST", "}{;;<<>>", SCHEME),
    ("fragment", "POST", SUBMIT + "#frag", "fragment"),
    ("empty fragment", "POST", SUBMIT + "#", "fragment"),
    ("fragment after query", "GET", STATUS + "?logs=1#x", "fragment"),
]


class FalLog:
    """The emulator's record of what reached "fal", over one kept-alive connection (the suite is large)."""

    def __init__(self, emulator: Server) -> None:
        self._http = httpx.Client(base_url=emulator.url, timeout=10)

    def requests(self) -> list[dict]:
        response = self._http.get("/_control/requests")
        response.raise_for_status()
        return response.json()

    def clear(self) -> None:
        self._http.delete("/_control/requests").raise_for_status()
        self._http.delete("/_control/faults").raise_for_status()

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="module")
def fal_log(emulator: Server) -> Iterator[FalLog]:
    log = FalLog(emulator)
    yield log
    log.close()


@pytest.fixture(scope="module")
def gateway_client(gateway: Server) -> Iterator[httpx.Client]:
    with leak_checked_client(gateway.url) as c:
        yield c


@pytest.fixture
def proxy(gateway_client: httpx.Client, fal_log: FalLog) -> httpx.Client:
    fal_log.clear()
    return gateway_client


@pytest.fixture(scope="module")
def cors_gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(emulator, FALGATE_CORS_ORIGINS=APP_ORIGIN)
    yield server
    server.stop()


def _target_headers(target: str | bytes | None) -> dict[str, str | bytes]:
    return {} if target is None else {TARGET: target}


def _send(
    client: httpx.Client, method: str, target: str | bytes | None, body: object = None, **headers: str
) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else None
    all_headers: dict[str, str | bytes] = {**_target_headers(target), **headers}
    if content is not None:
        all_headers["content-type"] = "application/json"
    return client.request(method, PROXY, headers=all_headers, content=content)


def _submit(client: httpx.Client, model_id: str, body: object = None, **headers: str) -> httpx.Response:
    return _send(client, "POST", f"{Q}/{model_id}", VALID_BODIES[model_id] if body is None else body, **headers)


def _sse_events(text: str) -> list[dict]:
    return [orjson.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


# ---- hostile targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "target", "reason"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_target_is_refused(proxy: httpx.Client, fal_log: FalLog, method: str, target, reason: str) -> None:
    body = VALID_BODIES[WAN_I2V] if method != "GET" else None
    response = _send(proxy, method, target, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert re.search(reason, detail, flags=re.IGNORECASE), f"detail {detail!r} does not say {reason!r}"
    assert fal_log.requests() == [], "a refused target reached fal"


def _split_step_by_step(raw: str) -> object:
    """`_split` with its one-step match turned off: the checks that name a refusal's reason."""
    from app.doors import target_url

    saved, target_url._PLAIN_TARGET = target_url._PLAIN_TARGET, re.compile(r"(?!)")
    try:
        return target_url._split(raw)
    except target_url.TargetRefused as refused:
        return ("refused", refused.detail)
    finally:
        target_url._PLAIN_TARGET = saved


def test_the_one_step_match_accepts_nothing_the_step_by_step_checks_refuse() -> None:
    # The hot path classifies an everyday target with one regex; it must agree with the full checks
    # on every spelling, hostile or not (else a target could slip past them on the fast path).
    from app.doors.target_url import TargetRefused, _split

    def one_step(raw: str) -> object:
        try:
            return _split(raw)
        except TargetRefused as refused:
            return ("refused", refused.detail)

    schemes = ["https://", "http://", "HTTPS://", "https:/", "//"]
    hosts = ["queue.fal.run", "fal.run", "rest.fal.ai", "rest.alpha.fal.ai", "Queue.fal.run", "queue.fal.run:443",
             "queue.fal.run:0443", "queue.fal.run:80", "queue.fal.run.evil.com", "u:p@queue.fal.run", "evil.com"]
    paths = ["/fal-ai/kling-video/requests/abc/status", "/tokens/", "/", "", "/a//", "/a/./b", "/a/../b", "/.a",
             "/..", "/a.b", "/a~b/c", "/a/b/", "/a%2fb", "/a b", "/a\\b", "/a\nb", "/-a", "/a/[b]", "/a@b"]
    queries = ["", "?logs=1", "?a=b&c", "?x=%2F", "?", "?fal_webhook=https%3A%2F%2Fx", "#f", "?a=1#", "?a=1#x"]
    targets = [s + h + p + q for s in schemes for h in hosts for p in paths for q in queries]
    targets += [c[2] for c in HOSTILE if isinstance(c[2], str)]
    disagree = [t for t in targets if one_step(t) != _split_step_by_step(t)]
    assert not disagree, disagree[:5]


@pytest.mark.parametrize(
    "target",
    [
        "HTTPS://queue.fal.run/fal-ai/wan-i2v",  # scheme case does not matter (RFC 3986)
        "https://queue.fal.run:443/fal-ai/wan-i2v",  # the default port, spelled out
        "https://queue.fal.run/fal-ai/wan-i2v/",  # one trailing slash
    ],
)
def test_equivalent_spellings_reach_only_the_configured_upstream(
    proxy: httpx.Client, fal_log: FalLog, gateway: Server, target: str
) -> None:
    # Accepted, but only classified: the URL fal receives is rebuilt from the configured base,
    # and its only query parameter is our own webhook receiver.
    response = _send(proxy, "POST", target, VALID_BODIES[WAN_I2V])
    assert response.status_code == 200, response.text
    (reached,) = fal_log.requests()
    assert (reached["method"], reached["path"]) == ("POST", f"/queue/{WAN_I2V}")
    assert parse_qs(reached["query"]) == {"fal_webhook": [f"{gateway.url}/v1/fal/webhook"]}


def test_only_known_query_parameters_are_passed_on(proxy: httpx.Client, fal_log: FalLog, gateway: Server) -> None:
    submitted = _send(proxy, "POST", f"{SUBMIT}?evil=1&fal_key=x", VALID_BODIES[WAN_I2V])
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    status = _send(proxy, "GET", f"{Q}/{WAN_I2V}/requests/{request_id}/status?logs=true&debug=1")
    assert status.status_code in (200, 202), status.text
    submit_seen, status_seen = fal_log.requests()
    assert parse_qs(submit_seen["query"]) == {"fal_webhook": [f"{gateway.url}/v1/fal/webhook"]}
    assert status_seen["query"] == "logs=1"


# ---- methods and CORS ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DELETE", "PATCH"])
def test_other_methods_are_405_json(proxy: httpx.Client, fal_log: FalLog, method: str) -> None:
    response = proxy.request(method, PROXY, headers={TARGET: SUBMIT})
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/json")
    assert "detail" in response.json()
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST", "PUT"}
    assert fal_log.requests() == []


def test_plain_options_without_cors_is_405(proxy: httpx.Client) -> None:
    response = proxy.options(PROXY)
    assert response.status_code == 405
    assert response.json()["detail"]


def test_cors_preflight_allows_the_configured_origin(cors_gateway: Server, fal_log: FalLog) -> None:
    fal_log.clear()
    with leak_checked_client(cors_gateway.url) as c:
        response = c.options(
            PROXY,
            headers={
                "origin": APP_ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-fal-target-url,content-type,authorization",
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    allowed_headers = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"x-fal-target-url", "content-type", "authorization"} <= allowed_headers
    assert "POST" in response.headers["access-control-allow-methods"]
    assert fal_log.requests() == []


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_cors_preflight_allows_the_other_proxy_methods(cors_gateway: Server, method: str) -> None:
    response = httpx.options(
        cors_gateway.url + PROXY,
        headers={
            "origin": APP_ORIGIN,
            "access-control-request-method": method,
            "access-control-request-headers": TARGET,
        },
    )
    assert response.status_code == 200, response.text
    assert method in response.headers["access-control-allow-methods"]


def test_cors_preflight_refuses_another_origin(cors_gateway: Server) -> None:
    response = httpx.options(
        cors_gateway.url + PROXY,
        headers={
            "origin": "http://evil.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "x-fal-target-url,content-type",
        },
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


def test_cors_responses_expose_fal_headers(cors_gateway: Server) -> None:
    with leak_checked_client(cors_gateway.url, headers={"origin": APP_ORIGIN}) as c:
        submitted = _submit(c, KLING)
        refused = _send(c, "POST", "https://evil.example/fal-ai/wan-i2v", VALID_BODIES[WAN_I2V])
        foreign = _send(c, "POST", f"{Q}/{KLING}", VALID_BODIES[KLING], origin="http://evil.example")
    assert submitted.status_code == 200, submitted.text
    assert submitted.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = {h.strip().lower() for h in submitted.headers["access-control-expose-headers"].split(",")}
    assert {"x-fal-request-id", "x-fal-request-timeout-type"} <= exposed
    assert submitted.headers["x-fal-request-id"] == submitted.json()["request_id"]
    # A refusal is readable by the app too, so it can show the reason.
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == APP_ORIGIN
    # Another origin gets no CORS grant (a browser would not hand it the answer).
    assert "access-control-allow-origin" not in foreign.headers


def test_without_configured_origins_no_cors_grant(proxy: httpx.Client) -> None:
    response = proxy.options(
        PROXY,
        headers={
            "origin": APP_ORIGIN,
            "access-control-request-method": "POST",
            "access-control-request-headers": TARGET,
        },
    )
    assert "access-control-allow-origin" not in response.headers


# ---- the protocol ----------------------------------------------------------------------------------


def test_submit_keeps_fal_status_and_answers_with_fal_queue_urls(proxy: httpx.Client, fal_log: FalLog) -> None:
    response = _submit(proxy, HAILUO)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "IN_QUEUE"
    assert isinstance(body["queue_position"], int)
    root = f"{Q}/fal-ai/minimax/requests/{body['request_id']}"
    assert (body["response_url"], body["status_url"], body["cancel_url"]) == (root, f"{root}/status", f"{root}/cancel")
    assert response.headers["x-fal-request-id"] == body["request_id"]
    assert "127.0.0.1" not in response.text
    (reached,) = fal_log.requests()
    assert (reached["method"], reached["path"]) == ("POST", f"/queue/{HAILUO}")


def test_invalid_submit_is_422_and_never_reaches_fal(proxy: httpx.Client, fal_log: FalLog) -> None:
    response = _submit(proxy, WAN_I2V, {**VALID_BODIES[WAN_I2V], "num_frames": 500})
    # The Express adapter of fal's own proxy would answer 200 here; the client needs 422 to raise ValidationError.
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "num_frames"]
    assert fal_log.requests() == []


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'"prompt"'])
def test_non_object_submit_body_is_422(proxy: httpx.Client, fal_log: FalLog, content: bytes) -> None:
    response = proxy.post(PROXY, headers={TARGET: f"{Q}/{MAGI}", "content-type": "application/json"}, content=content)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "body"
    assert fal_log.requests() == []


def test_callers_credentials_and_other_headers_stay_behind(proxy: httpx.Client, fal_log: FalLog) -> None:
    response = _submit(
        proxy,
        PIXVERSE,
        authorization="Key caller-own-id:caller-own-secret",
        cookie="session=caller-cookie",
        **{"x-fal-queue-priority": "low", "x-forwarded-for": "10.0.0.1", "x-custom": "1"},
    )
    assert response.status_code == 200, response.text
    (reached,) = fal_log.requests()
    headers = reached["headers"]
    assert headers["authorization"] == "Key <valid>"  # the gateway's key, masked by the emulator
    assert headers["x-fal-queue-priority"] == "low"  # a documented fal header is passed on
    for name in ("cookie", "x-forwarded-for", "x-custom", TARGET, "origin"):
        assert name not in headers, f"{name} reached fal"
    assert "caller-own-secret" not in orjson.dumps(reached).decode()


def test_polled_status_result_and_cancel(proxy: httpx.Client, fal_log: FalLog) -> None:
    submitted = _submit(proxy, WAN_I2V).json()
    base = f"{Q}/fal-ai/wan-i2v/requests/{submitted['request_id']}"
    first = _send(proxy, "GET", f"{base}/status?logs=1")
    assert first.status_code == 202, first.text
    assert first.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert first.json()["status_url"] == f"{base}/status"

    early = _send(proxy, "GET", base)
    assert early.status_code >= 400, "a result before completion must be an error, as fal's is"

    deadline = time.monotonic() + 15
    while (status := _send(proxy, "GET", f"{base}/status?logs=1")).json()["status"] != "COMPLETED":
        assert status.status_code == 202
        assert time.monotonic() < deadline, "request did not complete"
        time.sleep(0.1)
    assert status.status_code == 200
    assert status.json()["logs"], "COMPLETED status carries no logs"

    result = _send(proxy, "GET", base)
    assert result.status_code == 200, result.text
    assert result.json()["video"]["url"].endswith(".mp4")
    assert result.headers["x-fal-request-id"] == submitted["request_id"]

    late_cancel = _send(proxy, "PUT", f"{base}/cancel")
    assert late_cancel.status_code == 400
    assert late_cancel.json()["status"] == "ALREADY_COMPLETED"
    paths = [(r["method"], r["path"]) for r in fal_log.requests()]
    assert ("PUT", f"/queue/fal-ai/wan-i2v/requests/{submitted['request_id']}/cancel") in paths


def test_cancel_through_the_proxy_is_202(proxy: httpx.Client) -> None:
    submitted = _submit(proxy, KLING).json()
    base = f"{Q}/fal-ai/kling-video/requests/{submitted['request_id']}"
    cancelled = _send(proxy, "PUT", f"{base}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "CANCELLATION_REQUESTED"


def test_status_stream_is_event_stream_ending_at_completed(proxy: httpx.Client, fal_log: FalLog) -> None:
    submitted = _submit(proxy, MAGI).json()
    target = f"{Q}/fal-ai/magi-distilled/requests/{submitted['request_id']}/status/stream?logs=1"
    with proxy.stream("GET", PROXY, headers={TARGET: target, "accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = _sse_events(text)
    assert events, text
    assert events[-1]["status"] == "COMPLETED"
    assert "IN_PROGRESS" in {e["status"] for e in events}
    assert all(e["request_id"] == submitted["request_id"] for e in events)
    stream_calls = [r for r in fal_log.requests() if r["path"].endswith("/status/stream")]
    assert len(stream_calls) == 1 and stream_calls[0]["query"] == "logs=1"


def test_status_stream_of_unknown_request_keeps_fals_error(proxy: httpx.Client) -> None:
    target = f"{Q}/fal-ai/magi-distilled/requests/{REQUEST_ID}/status/stream"
    response = _send(proxy, "GET", target)
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/json")


def test_sync_run_goes_to_the_run_host(proxy: httpx.Client, fal_log: FalLog) -> None:
    response = _send(proxy, "POST", f"https://fal.run/{LUMA}", VALID_BODIES[LUMA])
    assert response.status_code == 200, response.text
    assert response.json()["video"]["url"].endswith(".mp4")
    (reached,) = fal_log.requests()
    assert (reached["method"], reached["path"]) == ("POST", f"/run/{LUMA}")


def test_sync_run_with_invalid_body_is_422(proxy: httpx.Client, fal_log: FalLog) -> None:
    response = _send(proxy, "POST", f"https://fal.run/{LUMA}", {**VALID_BODIES[LUMA], "aspect_ratio": "2:1"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "aspect_ratio"]
    assert fal_log.requests() == []


@pytest.mark.parametrize("host", ["rest.fal.ai", "rest.alpha.fal.ai"])
def test_upload_initiate(proxy: httpx.Client, fal_log: FalLog, emulator: Server, host: str) -> None:
    target = f"https://{host}/storage/upload/initiate?storage_type=fal-cdn-v3"
    response = _send(proxy, "POST", target, {"content_type": "image/png", "file_name": "cat.png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["file_url"].startswith(f"{emulator.url}/files/") and body["file_url"].endswith("/cat.png")
    assert body["upload_url"]
    (reached,) = fal_log.requests()
    assert (reached["method"], reached["path"], reached["query"]) == (
        "POST",
        "/rest/storage/upload/initiate",
        "storage_type=fal-cdn-v3",
    )


def test_status_stream_events_never_show_the_upstream_address(client: httpx.Client, emulator: Server) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    with client.stream("GET", body["status_url"] + "/stream") as stream:
        text = "".join(stream.iter_text())
    assert "data:" in text and '"COMPLETED"' in text
    assert emulator.url not in text
    assert body["status_url"].rsplit("/status", 1)[0] in text, "stream URLs point at the gateway"
