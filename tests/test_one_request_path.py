"""Every request, hot or not, passes the same middleware and the same exception handlers.

The front doors' requests are matched by a lookup ahead of FastAPI's route search (app/doors/route.py);
this proves that a middleware and an exception handler added to the app afterwards, as a deployment would
add them, see a hot submit, a hot status poll and a proxy-route request, accepted or refused, the same way
they see an ordinary route. The gateway runs under uvicorn on a free port, called over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import leak_checked_client
from tests.instrumented_app import HANDLER_HEADER, MIDDLEWARE_HEADER
from tests.invalid_bodies import KLING, VALID_BODIES
from tests.servers import Server, start_gateway

TARGET = "x-fal-target-url"
KLING_APP = "fal-ai/kling-video"


@pytest.fixture(scope="module")
def client(emulator: Server) -> Iterator[httpx.Client]:
    server = start_gateway(emulator, app_factory="tests.instrumented_app:create")
    with leak_checked_client(server.url) as client:
        yield client
    server.stop()


def _middleware_saw(response: httpx.Response) -> bool:
    return MIDDLEWARE_HEADER.decode() in response.headers


def test_middleware_sees_hot_submit_status_and_proxy_requests(client: httpx.Client) -> None:
    submitted = client.post(f"/{KLING}", json=VALID_BODIES[KLING])
    assert submitted.status_code == 200 and _middleware_saw(submitted)
    request_id = submitted.json()["request_id"]
    status = client.get(f"/{KLING_APP}/requests/{request_id}/status")
    assert status.status_code in (200, 202) and _middleware_saw(status)
    proxied = client.get(
        "/api/fal/proxy", headers={TARGET: f"https://queue.fal.run/{KLING_APP}/requests/{request_id}/status"}
    )
    assert proxied.status_code in (200, 202) and _middleware_saw(proxied)
    proxied_submit = client.post(
        "/api/fal/proxy", headers={TARGET: f"https://queue.fal.run/{KLING}"}, json=VALID_BODIES[KLING]
    )
    assert proxied_submit.status_code == 200 and _middleware_saw(proxied_submit)
    # An ordinary FastAPI route, for comparison: the middleware counts every request in order.
    models = client.get("/v1/models")
    assert _middleware_saw(models)
    assert int(models.headers[MIDDLEWARE_HEADER.decode()]) > int(proxied_submit.headers[MIDDLEWARE_HEADER.decode()])


def test_exception_handler_sees_hot_refusals(client: httpx.Client) -> None:
    invalid = client.post(f"/{KLING}", json={"prompt": "no image"})
    assert invalid.status_code == 422
    assert invalid.headers[HANDLER_HEADER] == f"InvalidInput on /{KLING}"
    assert invalid.json()["detail"][0]["loc"] == ["body", "image_url"]
    assert _middleware_saw(invalid)

    unknown = client.get(f"/{KLING_APP}/requests/0f0e0d0c-not-submitted-here/status")
    assert unknown.status_code == 404
    assert unknown.headers[HANDLER_HEADER] == f"NotFound on /{KLING_APP}/requests/0f0e0d0c-not-submitted-here/status"

    refused = client.get("/api/fal/proxy", headers={TARGET: "https://evil.example/fal-ai/wan-i2v"})
    assert refused.status_code == 400
    assert refused.headers[HANDLER_HEADER] == "TargetRefused on /api/fal/proxy"
    assert refused.json()["detail"].startswith("Invalid x-fal-target-url")


def test_requests_the_front_doors_decline_reach_the_other_routes(client: httpx.Client) -> None:
    # An unknown model is not a front-door request: the catch-all answers, through the same handler.
    unknown_model = client.post("/fal-ai/not-a-model", json={})
    assert unknown_model.status_code == 404
    assert unknown_model.headers[HANDLER_HEADER] == "NotFound on /fal-ai/not-a-model"
    assert KLING in unknown_model.json()["supported_models"]
    # Another method on the proxy route: 405 from its own route, with the Allow header.
    deleted = client.delete("/api/fal/proxy")
    assert deleted.status_code == 405
    assert deleted.headers["allow"] == "GET, POST, PUT"
    assert deleted.headers[HANDLER_HEADER] == "MethodNotAllowed on /api/fal/proxy"
