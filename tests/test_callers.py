"""Callers over real HTTP, on both stores: ownership, rate limits, in-flight slots, budgets, idempotency."""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import Upstream, leak_checked_client, wait_completed
from tests.invalid_bodies import VALID_BODIES
from tests.redis_server import redis_url
from tests.servers import Server, start_gateway

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
KLING_COST = 0.25  # 5 s at the default 0.05 USD per second
REDIS_URL = redis_url(13)
KEYS = {"alice": "alice-key-" + uuid.uuid4().hex, "bob": "bob-key-" + uuid.uuid4().hex}
# Caller ids unique to this run: two runs sharing the Redis test db never see each other's requests.
RUN = uuid.uuid4().hex[:8]
API_KEYS = ",".join(f"{who}-{RUN}:{key}" for who, key in KEYS.items())


def eventually(check, timeout: float = 3.0):
    """The value of check() once truthy. Completion may be applied by the webhook a moment after a poll
    saw COMPLETED: exactly one path frees the slot and refunds, and it need not be the poll's."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def store_url(kind: str) -> str:
    if kind == "redis":
        return REDIS_URL
    return f"sqlite:///{tempfile.mkdtemp()}/falgate.db"


def callers_gateway(emulator: Server, kind: str, **env: str) -> Server:
    if kind == "redis":
        redis.Redis.from_url(REDIS_URL).flushdb()
    return start_gateway(
        emulator,
        FALGATE_STORE_URL=store_url(kind),
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=API_KEYS,
        **env,
    )


def as_caller(server: Server, who: str) -> httpx.Client:
    return leak_checked_client(server.url, headers={"Authorization": f"Bearer {KEYS[who]}"})


def submits(upstream: Upstream) -> int:
    return sum(1 for r in upstream.requests() if r["method"] == "POST" and r["path"].startswith("/queue/"))


@pytest.fixture(params=["sqlite", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def owners_gateway(emulator: Server, store_kind: str) -> Iterator[Server]:
    server = callers_gateway(emulator, store_kind)
    yield server
    server.stop()


def test_unauthenticated_is_401(owners_gateway: Server, upstream: Upstream) -> None:
    upstream.clear()
    with leak_checked_client(owners_gateway.url) as anonymous:
        response = anonymous.post(f"/{KLING}", json=VALID_BODIES[KLING])
        assert response.status_code == 401
        assert "www-authenticate" in response.headers
        assert response.json()["detail"]
        bad = anonymous.get("/v1/requests", headers={"Authorization": "Bearer not-a-key"})
        assert bad.status_code == 401
        assert owners_gateway.url and "not-a-key" not in bad.text
    assert upstream.count() == 0


def test_other_callers_get_404_on_both_front_doors(owners_gateway: Server, upstream: Upstream) -> None:
    with as_caller(owners_gateway, "alice") as alice, as_caller(owners_gateway, "bob") as bob:
        body = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
        rid = body["request_id"]
        base = f"/fal-ai/kling-video/requests/{rid}"
        upstream.clear()
        assert bob.get(f"{base}/status").status_code == 404
        assert bob.get(f"{base}/status/stream").status_code == 404
        assert bob.get(base).status_code == 404
        assert bob.put(f"{base}/cancel").status_code == 404
        fal = f"https://queue.fal.run{base}"
        for method, target in [("GET", f"{fal}/status"), ("GET", f"{fal}/status/stream"), ("GET", fal), ("PUT", f"{fal}/cancel")]:
            answer = bob.request(method, "/api/fal/proxy", headers={"x-fal-target-url": target})
            assert answer.status_code == 404, (method, target, answer.text)
        unknown = bob.get("/fal-ai/kling-video/requests/00000000-0000-4000-8000-000000000000/status")
        assert unknown.status_code == 404 and unknown.json() == bob.get(f"{base}/status").json()
        assert upstream.count() == 0, "a refused caller causes no upstream call"

        wait_completed(alice, body["status_url"])
        assert alice.get(base).status_code == 200
        listed = alice.get("/v1/requests").json()["requests"]
        assert [r["request_id"] for r in listed][:1] == [rid]
        assert listed[0]["state"] == "COMPLETED"
        assert rid not in bob.get("/v1/requests").text


def test_submit_and_read_rate_limits(emulator: Server, upstream: Upstream, store_kind: str) -> None:
    server = callers_gateway(emulator, store_kind, FALGATE_RATE_LIMIT_SUBMIT="3/minute", FALGATE_RATE_LIMIT_READ="5/minute")
    try:
        with as_caller(server, "alice") as alice, as_caller(server, "bob") as bob:
            upstream.clear()
            answers = [alice.post(f"/{KLING}", json=VALID_BODIES[KLING]) for _ in range(4)]
            assert [a.status_code for a in answers] == [200, 200, 200, 429]
            limited = answers[-1]
            assert int(limited.headers["retry-after"]) > 0
            assert 'q=3' in limited.headers["ratelimit-policy"]
            assert "r=0" in limited.headers["ratelimit"]
            assert submits(upstream) == 3, "the refused submit never reached fal"
            assert bob.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code == 200, "buckets are per caller"

            status_url = answers[0].json()["status_url"]
            reads = [alice.get(status_url).status_code for _ in range(6)]
            assert reads[:5].count(429) == 0 and reads[5] == 429
            # a different request id is the same bucket: limits are per caller and class, not per URL
            other = answers[1].json()["status_url"]
            assert alice.get(other).status_code == 429
    finally:
        server.stop()


def test_inflight_slots_released_on_completion_and_cancel(emulator: Server, upstream: Upstream, store_kind: str) -> None:
    server = callers_gateway(emulator, store_kind, FALGATE_MAX_INFLIGHT="2")
    try:
        with as_caller(server, "alice") as alice:
            first = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            second = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
            upstream.clear()
            third = alice.post(f"/{KLING}", json=VALID_BODIES[KLING])
            assert third.status_code == 429 and "retry-after" in third.headers
            assert submits(upstream) == 0
            assert alice.get("/v1/usage").json()["inflight"] == 2

            assert alice.put(second["cancel_url"]).status_code == 202
            replacement = alice.post(f"/{KLING}", json=VALID_BODIES[KLING])
            assert replacement.status_code == 200, "cancel frees a slot"
            assert alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code == 429

            wait_completed(alice, first["status_url"])
            assert eventually(lambda: alice.get("/v1/usage").json()["inflight"] < 2), "completion frees a slot"
            assert alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code == 200
    finally:
        server.stop()


def test_budget_race_lets_exactly_n_through(emulator: Server, upstream: Upstream, store_kind: str) -> None:
    allowed = 4
    server = callers_gateway(emulator, store_kind, FALGATE_BUDGET_PER_DAY=str(allowed * KLING_COST))
    try:
        upstream.clear()

        def one(_: int) -> int:
            with as_caller(server, "alice") as alice:
                return alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(one, range(16)))
        assert codes.count(200) == allowed and codes.count(402) == 16 - allowed, codes
        assert submits(upstream) == allowed
        with as_caller(server, "alice") as alice:
            refused = alice.post(f"/{KLING}", json=VALID_BODIES[KLING])
            assert refused.status_code == 402
            assert refused.json()["budget"]["remaining"] == 0
            usage = alice.get("/v1/usage").json()
            assert usage["spent"] == pytest.approx(allowed * KLING_COST) and usage["remaining"] == 0
            # a cancelled job is refunded
            request = alice.get("/v1/requests").json()["requests"][0]
            assert alice.put(f"/fal-ai/kling-video/requests/{request['request_id']}/cancel").status_code in (202, 400)
    finally:
        server.stop()


def test_failed_job_is_refunded(emulator: Server, store_kind: str) -> None:
    server = callers_gateway(emulator, store_kind, FALGATE_BUDGET_PER_DAY="10")
    try:
        with as_caller(server, "alice") as alice:
            body = {**VALID_BODIES[KLING], "prompt": "this one will [fail]"}
            submitted = alice.post(f"/{KLING}", json=body).json()
            assert alice.get("/v1/usage").json()["spent"] == pytest.approx(KLING_COST)
            wait_completed(alice, submitted["status_url"])
            assert eventually(lambda: alice.get("/v1/usage").json()["spent"] == pytest.approx(0))
            assert alice.get("/v1/requests").json()["requests"][0]["state"] == "FAILED"
    finally:
        server.stop()


def test_idempotent_replays_make_one_upstream_submit(owners_gateway: Server, upstream: Upstream) -> None:
    key = {"Idempotency-Key": "order-" + uuid.uuid4().hex}
    upstream.clear()
    with as_caller(owners_gateway, "alice") as alice:

        def one(_: int) -> httpx.Response:
            return alice.post(f"/{KLING}", json=VALID_BODIES[KLING], headers=key)

        first = one(0)
        with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
            again = list(pool.map(one, range(5)))
        assert first.status_code == 200
        for answer in again:
            assert answer.status_code == 200
            assert answer.json()["request_id"] == first.json()["request_id"]
        assert submits(upstream) == 1
        changed = alice.post(f"/{KLING}", json={**VALID_BODIES[KLING], "prompt": "different"}, headers=key)
        assert changed.status_code == 422
    with as_caller(owners_gateway, "bob") as bob:
        theirs = bob.post(f"/{KLING}", json=VALID_BODIES[KLING], headers=key)
        assert theirs.status_code == 200 and theirs.json()["request_id"] != first.json()["request_id"]


def test_two_replicas_share_one_limit_and_one_budget(emulator: Server, upstream: Upstream) -> None:
    env = {"FALGATE_RATE_LIMIT_SUBMIT": "4/minute", "FALGATE_BUDGET_PER_DAY": str(3 * KLING_COST)}
    first = callers_gateway(emulator, "redis", **env)
    second = start_gateway(
        emulator,
        FALGATE_STORE_URL=REDIS_URL,
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=API_KEYS,
        **env,
    )
    try:
        upstream.clear()
        codes = []
        for i in range(6):
            with as_caller(first if i % 2 else second, "alice") as alice:
                codes.append(alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).status_code)
        assert codes.count(200) == 3, codes  # the budget stops the 4th
        assert submits(upstream) == 3
        with as_caller(first, "bob") as bob_first, as_caller(second, "bob") as bob_second:
            rates = [c.post(f"/{KLING}", json={"prompt": ""}).status_code for c in (bob_first, bob_second) * 3]
        assert rates.count(422) == 4 and rates.count(429) == 2, rates  # one limit across both replicas
        with as_caller(first, "alice") as alice, as_caller(second, "alice") as alice_too:
            rid = alice.get("/v1/requests").json()["requests"][0]["request_id"]
            assert alice_too.get(f"/fal-ai/kling-video/requests/{rid}/status").status_code in (200, 202)
    finally:
        first.stop()
        second.stop()


def test_sqlite_restart_remembers_owners(emulator: Server) -> None:
    url = store_url("sqlite")
    keys = API_KEYS
    server = start_gateway(emulator, FALGATE_STORE_URL=url, FALGATE_AUTH="api_key", FALGATE_API_KEYS=keys)
    with as_caller(server, "alice") as alice:
        rid = alice.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()["request_id"]
    server.stop()
    time.sleep(0.2)
    again = start_gateway(emulator, FALGATE_STORE_URL=url, FALGATE_AUTH="api_key", FALGATE_API_KEYS=keys)
    try:
        with as_caller(again, "alice") as alice, as_caller(again, "bob") as bob:
            assert alice.get(f"/fal-ai/kling-video/requests/{rid}/status").status_code in (200, 202)
            assert bob.get(f"/fal-ai/kling-video/requests/{rid}/status").status_code == 404
    finally:
        again.stop()


def test_upload_needs_a_caller_and_counts_as_a_submit(emulator: Server, upstream: Upstream) -> None:
    server = callers_gateway(emulator, "sqlite", FALGATE_RATE_LIMIT_SUBMIT="1/minute")
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    try:
        upstream.clear()
        with leak_checked_client(server.url) as anonymous:
            assert anonymous.post("/v1/storage/upload", files={"file": ("a.png", png)}).status_code == 401
        assert upstream.count() == 0
        with as_caller(server, "alice") as alice:
            first = alice.post("/v1/storage/upload", files={"file": ("a.png", png)})
            assert first.status_code == 200, first.text
            assert "ratelimit" in first.headers
            assert alice.post("/v1/storage/upload", files={"file": ("a.png", png)}).status_code == 429
    finally:
        server.stop()
