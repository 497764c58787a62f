"""Issue 13 items 1 and 5 over real HTTP: quotes (and dry runs) price a body exactly as a submit reserves
it, without reaching fal; every spending call carries X-Fal-Tags with the caller id, within fal's rules."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import Upstream, leak_checked_client
from tests.invalid_bodies import INVALID_BODIES, KLING, VALID_BODIES, WAN_PRO
from tests.servers import CANARY_FAL_KEY, Server, start_gateway

BUDGET = 100.0
RUN = uuid.uuid4().hex[:8]
KEY = "quote-key-" + uuid.uuid4().hex
CALLER = f"quoter-{RUN}"
JWT_SECRET = "quote-tags-secret-" + uuid.uuid4().hex
PROXY = "/api/fal/proxy"
TAG_KEY = re.compile(r"[a-z0-9._-]+")


def _submits(upstream: Upstream) -> list[dict]:
    return [r for r in upstream.requests() if r["method"] == "POST" and r["path"].startswith(("/queue/", "/run/"))]


@pytest.fixture(scope="module")
def keyed(emulator: Server) -> Iterator[Server]:
    server = start_gateway(
        emulator,
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=f"{CALLER}:{KEY}",
        FALGATE_BUDGET_PER_DAY=str(BUDGET),
    )
    yield server
    server.stop()


def _client(server: Server, **headers: str) -> httpx.Client:
    return leak_checked_client(server.url, headers={"Authorization": f"Bearer {KEY}", **headers})


# --------------------------------------------------------------------------- quote and dry run

# kling bills per second of `duration` (10 s here, not the default 5); wan-pro is one unit per request.
QUOTED = [(KLING, {**VALID_BODIES[KLING], "duration": "10"}, 10.0, "second"), (WAN_PRO, VALID_BODIES[WAN_PRO], 1.0, "request")]


@pytest.mark.parametrize(("model_id", "body", "units", "unit"), QUOTED, ids=["per-second", "one-unit"])
def test_quote_equals_the_reservation(keyed: Server, upstream: Upstream, model_id: str, body: dict, units: float, unit: str) -> None:
    with _client(keyed) as client:
        spent_before = client.get("/v1/usage").json()["spent"]
        upstream.clear()
        answer = client.post(f"/v1/quote/{model_id}", json=body)
        assert answer.status_code == 200, answer.text
        quote = answer.json()
        assert _submits(upstream) == []  # a quote never reaches fal
        assert set(quote) >= {"units", "unit", "unit_price", "cost", "currency", "remaining"}
        assert (quote["units"], quote["unit"], quote["currency"]) == (units, unit, "USD")
        assert quote["cost"] == pytest.approx(quote["units"] * quote["unit_price"])
        assert quote["remaining"] == pytest.approx(BUDGET - spent_before)
        assert "ratelimit" in answer.headers  # counted against the read limit

        submitted = client.post(f"/{model_id}", json=body)
        assert submitted.status_code == 200, submitted.text
        spent_after = client.get("/v1/usage").json()["spent"]
        assert spent_after - spent_before == pytest.approx(quote["cost"])  # the reservation is the quote
        request_id = submitted.json()["request_id"]
        record = next(r for r in client.get("/v1/requests").json()["requests"] if r["request_id"] == request_id)
        assert record["estimated_cost"] == quote["cost"]
        again = client.post(f"/v1/quote/{model_id}", json=body).json()
        assert again["remaining"] == pytest.approx(BUDGET - spent_after)


FIXTURES = Path(__file__).parent / "fixtures"
VEO3 = "fal-ai/veo3/fast/image-to-video"  # configured (FALGATE_MODELS), judged by fal's own document
KLING_TURBO = "fal-ai/kling-video/v2.5-turbo/pro/image-to-video"  # configured, no price rule: one unit
FILE = "https://storage.googleapis.com/falserverless/example_inputs/veo3-i2v-input.png"


def test_quote_of_configured_models(emulator: Server, upstream: Upstream) -> None:
    rules = {VEO3: {"kind": "per_second", "field": "duration", "default": "8s"}}
    server = start_gateway(
        emulator,
        FALGATE_AUTH="api_key",
        FALGATE_API_KEYS=f"{CALLER}-configured:{KEY}",
        FALGATE_BUDGET_PER_DAY=str(BUDGET),
        FALGATE_MODELS=f"{VEO3},{KLING_TURBO}",
        FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"),
        FALGATE_PRICES=json.dumps({VEO3: 0.15, KLING_TURBO: 0.3}),
        FALGATE_PRICE_RULES=json.dumps(rules),
    )
    try:
        with _client(server) as client:
            for model_id, body, units in [
                (VEO3, {"prompt": "p", "image_url": FILE, "duration": "6s"}, 6.0),
                (KLING_TURBO, {"prompt": "p", "image_url": FILE}, 1.0),
            ]:
                spent = client.get("/v1/usage").json()["spent"]
                upstream.clear()
                quote = client.post(f"/v1/quote/{model_id}", json=body).json()
                assert quote["units"] == units and _submits(upstream) == [], quote
                assert client.post(f"/{model_id}", json=body).status_code == 200
                assert client.get("/v1/usage").json()["spent"] - spent == pytest.approx(quote["cost"])
            bad = {"prompt": "p", "image_url": FILE, "duration": "7s"}
            quoted, submitted = client.post(f"/v1/quote/{VEO3}", json=bad), client.post(f"/{VEO3}", json=bad)
            assert quoted.status_code == submitted.status_code == 422 and quoted.json() == submitted.json()
    finally:
        server.stop()


def test_an_invalid_body_gets_the_submits_422_and_reaches_nobody(keyed: Server, upstream: Upstream) -> None:
    cases = [case for case in INVALID_BODIES if case[0] == KLING][:3] + [(KLING, [1, 2], ()), (KLING, "no", ())]
    with _client(keyed) as client:
        spent_before = client.get("/v1/usage").json()["spent"]
        upstream.clear()
        for model_id, body, _ in cases:
            submitted = client.post(f"/{model_id}", json=body)
            quoted = client.post(f"/v1/quote/{model_id}", json=body)
            dry = client.post(f"/{model_id}", params={"dry_run": "1"}, json=body)
            assert submitted.status_code == 422, submitted.text
            assert quoted.status_code == dry.status_code == 422
            assert quoted.json() == dry.json() == submitted.json()
        raw = client.post(f"/v1/quote/{KLING}", content=b"{not json", headers={"content-type": "application/json"})
        assert raw.status_code == 422 and raw.json() == client.post(f"/{KLING}", content=b"{not json").json()
        assert client.post("/v1/quote/fal-ai/nope", json={}).status_code == 404
        assert _submits(upstream) == []
        assert client.get("/v1/usage").json()["spent"] == spent_before


def test_dry_run_answers_the_quote_and_spends_nothing(keyed: Server, upstream: Upstream) -> None:
    body = {**VALID_BODIES[KLING], "duration": "10"}
    with _client(keyed) as client:
        spent_before = client.get("/v1/usage").json()["spent"]
        upstream.clear()
        for flag in ("1", "true"):
            dry = client.post(f"/{KLING}", params={"dry_run": flag}, json=body)
            assert dry.status_code == 200, dry.text
            assert dry.json() == client.post(f"/v1/quote/{KLING}", json=body).json()
        assert _submits(upstream) == []
        assert client.get("/v1/usage").json()["spent"] == spent_before
        # dry_run=0 is a real submit
        assert "request_id" in client.post(f"/{KLING}", params={"dry_run": "0"}, json=body).json()
        assert len(_submits(upstream)) == 1


# --------------------------------------------------------------------------- X-Fal-Tags


def _parse_tags(raw: str) -> list[tuple[str, str]]:
    """The header as fal reads it, checked against fal's documented limits."""
    assert len(raw.encode()) <= 1024, raw
    pairs = [tuple(item.split("=", 1)) for item in raw.split(",")]
    assert len(pairs) <= 10, raw
    for pair in pairs:
        assert len(pair) == 2 and TAG_KEY.fullmatch(pair[0]) and not pair[0].startswith("fal."), raw
        assert "=" not in pair[1] and pair[1] == pair[1].strip() and pair[1].isascii(), raw
    return pairs  # type: ignore[return-value]


ODD_SUBJECTS = [
    f"plain-{RUN}",
    f"ünïcødé-用户-{RUN}",
    f"with=equals,and,commas {RUN}",
    f"  spaced out {RUN} ",
    "x" * 200 + RUN,
    f"sha256-{RUN}",  # looks like a hashed id: hashed too, so it cannot pose as another caller's
    f"user@example.com/{RUN}",
]


@pytest.fixture(scope="module")
def jwt_gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(emulator, FALGATE_AUTH="jwt", FALGATE_JWT_SECRET=JWT_SECRET)
    yield server
    server.stop()


def _token(subject: str) -> str:
    return jwt.encode({"sub": subject, "exp": int(time.time()) + 600}, JWT_SECRET, algorithm="HS256")


def _expected_value(subject: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._:@+/-]{1,64}", subject) and not subject.startswith("sha256-"):
        return subject
    return "sha256-" + hashlib.sha256(subject.encode()).hexdigest()[:32]


def test_tags_reach_fal_on_every_submit_for_caller_ids_of_any_shape(jwt_gateway: Server, upstream: Upstream) -> None:
    values = set()
    for subject in ODD_SUBJECTS:
        with leak_checked_client(jwt_gateway.url, headers={"Authorization": f"Bearer {_token(subject)}"}) as client:
            upstream.clear()
            mirrored = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
            proxied = client.post(
                PROXY, json=VALID_BODIES[KLING], headers={"x-fal-target-url": f"https://queue.fal.run/{KLING}"}
            )
            run = client.post(PROXY, json=VALID_BODIES[WAN_PRO], headers={"x-fal-target-url": f"https://fal.run/{WAN_PRO}"})
            assert (mirrored.status_code, proxied.status_code, run.status_code) == (200, 200, 200), subject
            client.get(f"/fal-ai/kling-video/requests/{mirrored.json()['request_id']}/status")
            sent = upstream.requests()
            spending = _submits(upstream)
            assert len(spending) == 3, subject
            for request in spending:
                pairs = _parse_tags(request["headers"]["x-fal-tags"])
                assert pairs[0] == ("falgate-caller", _expected_value(subject)), subject
            # only calls fal bills are tagged
            assert all("x-fal-tags" not in r["headers"] for r in sent if r not in spending)
            values.add(_expected_value(subject))
    assert len(values) == len(ODD_SUBJECTS)  # every caller stays apart in fal's reports


def test_a_callers_own_tags_are_merged_and_ours_cannot_be_spoofed(jwt_gateway: Server, upstream: Upstream) -> None:
    subject = f"tagger-{RUN}"
    auth = {"Authorization": f"Bearer {_token(subject)}"}
    with leak_checked_client(jwt_gateway.url, headers=auth) as client:
        upstream.clear()
        merged = client.post(f"/{KLING}", json=VALID_BODIES[KLING], headers={"X-Fal-Tags": "project=storyboard, env=dev"})
        assert merged.status_code == 200, merged.text
        (sent,) = _submits(upstream)
        assert _parse_tags(sent["headers"]["x-fal-tags"]) == [
            ("falgate-caller", subject), ("project", "storyboard"), ("env", "dev")
        ]
        upstream.clear()
        refused = [
            "falgate-caller=someone-else",  # spoofing our tag
            "fal.internal=1",  # fal's reserved prefix
            "Upper=1",  # keys are [a-z0-9._-]
            "novalue",
            ",".join(f"k{i}=v" for i in range(10)),  # 10 of theirs + ours is 11
            "k=" + "v" * 1020,  # over 1 KB with ours
        ]
        for raw in refused:
            for path, extra in ((f"/{KLING}", {}), (PROXY, {"x-fal-target-url": f"https://queue.fal.run/{KLING}"})):
                answer = client.post(path, json=VALID_BODIES[KLING], headers={"X-Fal-Tags": raw, **extra})
                assert answer.status_code == 422, (raw, answer.text)
                assert answer.json()["detail"][0]["loc"] == ["header", "x-fal-tags"]
        assert _submits(upstream) == []


def test_the_emulator_refuses_tags_fal_would_refuse(emulator: Server) -> None:
    auth = {"Authorization": f"Key {CANARY_FAL_KEY}"}
    for raw, code in [("a=1,b.c-d_e=2", 200), ("fal.x=1", 422), ("A=1", 422), (",".join(f"k{i}=v" for i in range(11)), 422),
                      ("k=" + "v" * 1100, 422)]:
        answer = httpx.post(f"{emulator.url}/queue/{KLING}", json=VALID_BODIES[KLING], headers={**auth, "X-Fal-Tags": raw})
        assert answer.status_code == code, (raw, answer.text)
