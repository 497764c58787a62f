"""The mirrored queue API end to end: gateway and emulator as real servers, talked to over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from app.catalog.models import CATALOG
from tests.conftest import Upstream, wait_completed
from tests.invalid_bodies import VALID_BODIES
from tests.servers import Server

KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"


@pytest.mark.parametrize("model_id", list(CATALOG))
def test_each_model_submit_status_result(client: httpx.Client, gateway: Server, model_id: str) -> None:
    app_id = CATALOG[model_id].app_id
    submitted = client.post(f"/{model_id}", json=VALID_BODIES[model_id])
    assert submitted.status_code == 200, submitted.text
    body = submitted.json()
    assert body["status"] == "IN_QUEUE" and "queue_position" in body
    request_id = body["request_id"]
    root = f"{gateway.url}/{app_id}/requests/{request_id}"
    assert body["response_url"] == root
    assert body["status_url"] == f"{root}/status"
    assert body["cancel_url"] == f"{root}/cancel"
    assert submitted.headers["x-fal-request-id"] == request_id

    status = wait_completed(client, body["status_url"])
    assert "logs" in status and status["logs"], "logs were asked for"
    result = client.get(body["response_url"])
    assert result.status_code == 200
    assert result.json()["video"]["url"].startswith("http")


def test_status_shows_queue_position_then_progress(client: httpx.Client) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    first = client.get(body["status_url"])
    assert first.status_code == 202
    assert first.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    if first.json()["status"] == "IN_QUEUE":
        assert isinstance(first.json()["queue_position"], int)
    wait_completed(client, body["status_url"])


def test_result_before_completion_is_fals_error(client: httpx.Client) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    early = client.get(body["response_url"])
    assert 400 <= early.status_code < 500
    assert "detail" in early.json()


def test_status_stream_relays_events_until_completed(client: httpx.Client) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    statuses: list[str] = []
    pings = 0
    with client.stream("GET", body["status_url"] + "/stream", params={"logs": 1}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                statuses.append(json.loads(line[5:])["status"])
            elif line.startswith(":"):
                pings += 1
    assert statuses[-1] == "COMPLETED"
    assert "IN_PROGRESS" in statuses
    assert pings >= 1, "keep-alive comments must be streamed through"


def test_cancel_codes(client: httpx.Client) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    cancelled = client.put(body["cancel_url"])
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "CANCELLATION_REQUESTED"

    done = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    wait_completed(client, done["status_url"])
    again = client.put(done["cancel_url"])
    assert again.status_code == 400
    assert again.json()["status"] == "ALREADY_COMPLETED"

    unknown = client.put("/fal-ai/kling-video/requests/00000000-0000-0000-0000-000000000000/cancel")
    assert unknown.status_code == 404


def test_full_model_id_is_accepted_in_per_request_paths(client: httpx.Client) -> None:
    body = client.post(f"/{KLING}", json=VALID_BODIES[KLING]).json()
    status = client.get(f"/{KLING}/requests/{body['request_id']}/status")
    assert status.status_code in (200, 202)


def test_unknown_model_lists_supported(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = client.post("/fal-ai/not-a-model/image-to-video", json={"prompt": "x", "image_url": "https://a.b/c.png"})
    assert response.status_code == 404
    assert set(response.json()["supported_models"]) == set(CATALOG)
    status = client.get("/fal-ai/not-a-model/requests/abc/status")
    assert status.status_code == 404
    assert upstream.count() == 0


def test_catalog_lists_every_model(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()["models"]
    assert {m["id"] for m in models} == set(CATALOG)
    for model in models:
        assert model["app_id"] == CATALOG[model["id"]].app_id
        assert {"prompt", "image_url"} <= set(model["input_schema"]["required"])
        assert model["billing"]["description"]


def test_openapi_shows_each_models_schema(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    for model_id, model in CATALOG.items():
        body = spec["paths"][f"/{model_id}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        name = body["$ref"].rsplit("/", 1)[1]
        assert name == model.input_model.__name__
        assert "prompt" in spec["components"]["schemas"][name]["properties"]


def test_headers_to_upstream_are_allowlisted(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = client.post(
        f"/{KLING}",
        json=VALID_BODIES[KLING],
        headers={
            "Authorization": "Bearer caller-own-token-123",
            "Cookie": "session=caller-cookie-456",
            "x-fal-queue-priority": "low",
            "x-fal-runner-hint": "hint-1",
            "x-custom-thing": "nope",
        },
    )
    assert response.status_code == 200
    (seen,) = upstream.requests()
    headers = seen["headers"]
    assert headers["authorization"] == "Key <valid>"
    assert headers["x-fal-queue-priority"] == "low"
    assert headers["x-fal-runner-hint"] == "hint-1"
    assert "cookie" not in headers and "x-custom-thing" not in headers
    assert "caller-own-token-123" not in json.dumps(seen)
    assert "set-cookie" not in response.headers


def test_body_is_forwarded_as_validated(client: httpx.Client, upstream: Upstream) -> None:
    # fal gets the serialisation of the object that was validated (issue 11, item 12), nothing added to it.
    upstream.clear()
    raw = b'{"prompt":  "a cat",\n "image_url": "https://example.com/cat.png"}'
    response = client.post(f"/{KLING}", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200
    (seen,) = upstream.requests()
    assert seen["body_size"] == len(b'{"prompt":"a cat","image_url":"https://example.com/cat.png"}'), "no defaults"


def test_oversized_body_is_413_and_never_forwarded(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    big = b'{"prompt": "x", "image_url": "' + b"a" * (12 * 1024 * 1024) + b'"}'
    response = client.post(f"/{KLING}", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "detail" in response.json()

    def chunks():
        yield big[: 1024 * 1024]
        yield big[1024 * 1024 :]

    streamed = client.post(f"/{KLING}", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert upstream.count() == 0


def test_malformed_json_is_422(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = client.post(f"/{KLING}", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body"]
    assert upstream.count() == 0


def test_malformed_request_id_is_400(client: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    assert client.get("/fal-ai/kling-video/requests/..%2f..%2fadmin/status").status_code in (400, 404)
    assert client.get("/fal-ai/kling-video/requests/a$b/status").status_code == 400
    assert upstream.count() == 0
