"""FALGATE_MODELS: endpoints beyond the nine, validated against fal's own OpenAPI documents (issue 12).

A real gateway serves two endpoints from tests/fixtures/openapi (fal's document format), in front of the
real emulator: valid bodies go through both doors and fal-client; invalid ones get a fal-shaped 422
naming the field, and never reach the emulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client
import httpx
import pytest

from app.catalog.models import CATALOG
from tests import emulator_schemas
from tests.conftest import Upstream, leak_checked_client
from tests.servers import CANARY_FAL_KEY, ROOT, Server, free_port, start_emulator, start_gateway, wait_completed_flow

FIXTURES = Path(__file__).parent / "fixtures"
KLING = "fal-ai/kling-video/v2.5-turbo/pro/image-to-video"
VEO = "fal-ai/veo3/fast/image-to-video"
DEPRECATED = "fal-ai/old-video/v1/image-to-video"
IMAGE = "https://storage.googleapis.com/falserverless/example_inputs/veo3-i2v-input.png"
VALID = {
    KLING: {"prompt": "a car races", "image_url": IMAGE, "duration": "10", "cfg_scale": 0.7,
            "camera_control": {"movement_type": "zoom", "movement_value": -3}, "tail_image_url": None},
    VEO: {"prompt": "a woman laughs", "image_url": IMAGE, "duration": "6s", "guidance_scale": 0.5,
          "reference_image_urls": [IMAGE], "sampling": {"steps": 20, "keyframes": [{"timestamp": 1.5, "image_url": IMAGE}]},
          "seed": None},
}


@pytest.fixture(scope="module")
def models_gateway(emulator: Server) -> Iterator[Server]:
    server = start_gateway(emulator, FALGATE_MODELS=f"{KLING},{VEO}", FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"))
    yield server
    server.stop()


@pytest.fixture
def gw(models_gateway: Server, upstream: Upstream) -> Iterator[httpx.Client]:
    upstream.clear_faults()
    with leak_checked_client(models_gateway.url) as client:
        yield client


@pytest.mark.parametrize("model_id", [KLING, VEO])
def test_valid_body_end_to_end_rest_door(gw: httpx.Client, model_id: str) -> None:
    result = wait_completed_flow(gw, model_id, VALID[model_id])
    assert result["video"]["url"]


@pytest.mark.parametrize("model_id", [KLING, VEO])
def test_valid_body_end_to_end_proxy_door(gw: httpx.Client, model_id: str) -> None:
    submitted = gw.post("/api/fal/proxy", json=VALID[model_id], headers={"x-fal-target-url": f"https://queue.fal.run/{model_id}"})
    assert submitted.status_code == 200, submitted.text
    request_id = submitted.json()["request_id"]
    app_id = "/".join(model_id.split("/")[:2])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = gw.get("/api/fal/proxy", headers={"x-fal-target-url": f"https://queue.fal.run/{app_id}/requests/{request_id}/status"})
        assert status.status_code in (200, 202), status.text
        if status.json()["status"] == "COMPLETED":
            break
        time.sleep(0.1)
    result = gw.get("/api/fal/proxy", headers={"x-fal-target-url": f"https://queue.fal.run/{app_id}/requests/{request_id}"})
    assert result.status_code == 200 and result.json()["video"]["url"]


@pytest.mark.parametrize("model_id", [KLING, VEO])
def test_fal_client_subscribe(models_gateway: Server, monkeypatch: pytest.MonkeyPatch, model_id: str) -> None:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{models_gateway.url}/")
    fal = fal_client.SyncClient(key="caller-side-dummy-key")
    result = fal.subscribe(model_id, arguments=VALID[model_id], with_logs=True)
    assert result["video"]["url"]


INVALID = [
    (VEO, {"duration": "5s"}, ["body", "duration"], "enum"),
    (KLING, {"cfg_scale": 1.5}, ["body", "cfg_scale"], "less_than_equal"),
    (VEO, {"guidance_scale": 0}, ["body", "guidance_scale"], "greater_than"),  # exclusiveMinimum inside anyOf
    (VEO, {"sampling": {"shift": 0}}, ["body", "sampling", "shift"], "greater_than"),
    (VEO, {"sampling": {"keyframes": [{"timestamp": 9}]}}, ["body", "sampling", "keyframes", 0, "timestamp"], "less_than_equal"),
    (VEO, {"sampling": {"keyframes": [{}]}}, ["body", "sampling", "keyframes", 0, "timestamp"], "missing"),
    (KLING, {"camera_control": {"movement_type": "pan", "movement_value": 11}}, ["body", "camera_control", "movement_value"], "less_than_equal"),
    (KLING, {"camera_control": "spin"}, ["body", "camera_control"], "union_error"),  # neither object nor preset
    (KLING, {"camera_control": {"movement_type": "pan", "movement_value": 1, "speed": 2}}, ["body", "camera_control", "speed"], "extra_forbidden"),
    (VEO, {"generate_audio": "yes"}, ["body", "generate_audio"], "bool_type"),
    (VEO, {"seed": -1}, ["body", "seed"], "greater_than_equal"),
    (VEO, {"reference_image_urls": [IMAGE] * 4}, ["body", "reference_image_urls"], "too_long"),
    (VEO, {"colour": "red"}, ["body", "colour"], "extra_forbidden"),
    (KLING, {"prompt": None}, ["body", "prompt"], "string_type"),
    # File-URL fields get the nine's URL / data-URI policy.
    (KLING, {"tail_image_url": "ftp://example.com/a.png"}, ["body", "tail_image_url"], "url_scheme"),
    (VEO, {"reference_image_urls": ["data:image/png;base64,AAA"]}, ["body", "reference_image_urls", 0], "base64_decode"),
    (VEO, {"sampling": {"keyframes": [{"timestamp": 1, "image_url": "file:///etc/passwd"}]}},
     ["body", "sampling", "keyframes", 0, "image_url"], "url_scheme"),
]


@pytest.mark.parametrize(("model_id", "change", "loc", "kind"), INVALID)
def test_invalid_body_refused_without_upstream_call(
    gw: httpx.Client, upstream: Upstream, model_id: str, change: dict, loc: list, kind: str
) -> None:
    body = {"prompt": "p", "image_url": IMAGE, **change}
    upstream.clear()
    for path, headers in ((f"/{model_id}", {}), ("/api/fal/proxy", {"x-fal-target-url": f"https://queue.fal.run/{model_id}"})):
        response = gw.post(path, json=body, headers=headers)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert {"loc": loc, "type": kind} in [{"loc": err["loc"], "type": err["type"]} for err in detail], detail
        assert all(set(err) == {"loc", "msg", "type"} for err in detail)
    assert upstream.requests() == []


def test_missing_required_fields(gw: httpx.Client, upstream: Upstream) -> None:
    upstream.clear()
    response = gw.post(f"/{KLING}", json={"duration": "5"})
    assert response.status_code == 422
    assert [err["loc"] for err in response.json()["detail"]] == [["body", "image_url"], ["body", "prompt"]]
    assert upstream.requests() == []


def test_errors_never_quote_the_value(gw: httpx.Client) -> None:
    response = gw.post(f"/{VEO}", json={"prompt": "p", "image_url": IMAGE, "duration": "secret-value-42"})
    assert response.status_code == 422 and "secret-value-42" not in response.text


def test_catalog_and_docs_follow_the_registry(gw: httpx.Client) -> None:
    models = {entry["id"]: entry for entry in gw.get("/v1/models").json()["models"]}
    assert len(models) == 11
    veo = models[VEO]
    assert (veo["app_id"], veo["category"], veo["source"]) == ("fal-ai/veo3", "image-to-video", "folder")
    assert veo["input_schema"]["properties"]["sampling"] == {"$ref": "#/$defs/SamplingSettings"}
    assert "Keyframe" in veo["input_schema"]["$defs"]
    assert veo["billing"]["unit"] == "request"
    assert (models["fal-ai/veo2/image-to-video"]["source"], models["fal-ai/veo2/image-to-video"]["category"]) == (
        "built-in", "image-to-video")
    spec = gw.get("/openapi.json").json()
    ref = spec["paths"][f"/{KLING}"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = ref.rsplit("/", 1)[1]
    schema = spec["components"]["schemas"][name]
    assert schema["properties"]["camera_control"]["anyOf"][0]["$ref"].rsplit("/", 1)[1] in spec["components"]["schemas"]


def test_unknown_fields_allowed_when_configured(emulator: Server, upstream: Upstream) -> None:
    server = start_gateway(emulator, FALGATE_MODELS=VEO, FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"),
                           FALGATE_ALLOW_UNKNOWN_FIELDS="true")
    try:
        response = httpx.post(f"{server.url}/{VEO}", json={"prompt": "p", "image_url": IMAGE, "colour": "red"})
        assert response.status_code == 200, response.text
    finally:
        server.stop()


def test_deprecated_endpoint_refuses_start(emulator: Server) -> None:
    with pytest.raises(RuntimeError, match=rf"(?s)exited.*{DEPRECATED}: fal marks this endpoint deprecated"):
        start_gateway(emulator, FALGATE_MODELS=DEPRECATED, FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi_deprecated"))


def test_deprecated_endpoint_left_out_when_not_strict(emulator: Server) -> None:
    server = start_gateway(emulator, FALGATE_MODELS=f"{DEPRECATED},{VEO}", FALGATE_MODELS_STRICT="false",
                           FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi_deprecated"),
                           FALGATE_MODEL_CACHE_DIR=str(FIXTURES / "openapi"))
    try:
        ids = [entry["id"] for entry in httpx.get(f"{server.url}/v1/models").json()["models"]]
        assert VEO in ids and DEPRECATED not in ids
        assert "left out" in server.output and DEPRECATED in server.output
    finally:
        server.stop()


def test_wildcard_is_refused(emulator: Server) -> None:
    with pytest.raises(RuntimeError, match="'\\*' is not allowed"):
        start_gateway(emulator, FALGATE_MODELS="fal-ai/*")


# --- live loading from the (emulated) model API, the cache, and `falgate models` ---------------------------------


@pytest.fixture(scope="module")
def model_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An emulator whose model API also serves the two fixture documents and the deprecated one."""
    folder = tmp_path_factory.mktemp("emulator-schemas")
    for source in (FIXTURES / "openapi").glob("*.json"):
        (folder / source.name).write_text(source.read_text())
    for source in (FIXTURES / "openapi_deprecated").glob("*.json"):
        (folder / source.name).write_text(source.read_text())
    (folder / "pricing.json").write_text(json.dumps({VEO: {"unit_price": 0.4, "unit": "second"}}))
    server = start_emulator(FALGATE_EMULATOR_SCHEMA_DIR=str(folder))
    yield server
    server.stop()


def _api(server: Server) -> dict[str, str]:
    return {"FALGATE_FAL_API_URL": f"{server.url}/api"}


def test_live_load_cache_and_restart_with_model_api_down(tmp_path: Path, emulator: Server) -> None:
    api = start_emulator(FALGATE_EMULATOR_SCHEMA_DIR=str(FIXTURES / "openapi"))
    cache = tmp_path / "cache"
    env = {"FALGATE_MODELS": f"{KLING},{VEO}", "FALGATE_MODEL_CACHE_DIR": str(cache), **_api(api)}
    try:
        server = start_gateway(emulator, **env)
        try:
            models = {e["id"]: e for e in httpx.get(f"{server.url}/v1/models").json()["models"]}
            assert models[VEO]["source"] == models[KLING]["source"] == "model-api"
            assert sorted(p.name for p in cache.glob("fal-ai*.json")) == sorted(p.name for p in (FIXTURES / "openapi").glob("*.json"))
            refused = httpx.post(f"{server.url}/{VEO}", json={"prompt": "p", "image_url": IMAGE, "duration": "5s"})
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "duration"]
        finally:
            server.stop()
    finally:
        api.stop()
    # The model API is gone (its emulator stopped): the gateway starts from the cache and still validates.
    server = start_gateway(emulator, **env)
    try:
        models = {e["id"]: e for e in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert models[VEO]["source"] == models[KLING]["source"] == "cache"
        assert "model API is unreachable" in server.output
        result = wait_completed_flow(httpx.Client(base_url=server.url, timeout=30), KLING, VALID[KLING])
        assert result["video"]["url"]
        refused = httpx.post(f"{server.url}/{KLING}", json={"prompt": "p", "image_url": IMAGE, "cfg_scale": 2})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "cfg_scale"]
    finally:
        server.stop()


def test_live_deprecated_and_unknown_endpoints_refuse_start(model_api: Server, emulator: Server, tmp_path: Path) -> None:
    env = {"FALGATE_MODEL_CACHE_DIR": str(tmp_path), **_api(model_api)}
    with pytest.raises(RuntimeError, match=rf"(?s){DEPRECATED}: fal marks this endpoint deprecated"):
        start_gateway(emulator, FALGATE_MODELS=f"{VEO},{DEPRECATED}", **env)
    with pytest.raises(RuntimeError, match=r"(?s)fal-ai/no-such/model: unknown endpoint"):
        start_gateway(emulator, FALGATE_MODELS="fal-ai/no-such/model", **env)


def test_emulator_model_api_paginates_and_expands(model_api: Server) -> None:
    headers = {"authorization": f"Key {CANARY_FAL_KEY}"}
    assert httpx.get(f"{model_api.url}/api/v1/models").status_code == 401
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 4, "expand": "openapi-3.0", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{model_api.url}/api/v1/models", params=params, headers=headers).json()
        seen += [m["endpoint_id"] for m in page["models"]]
        assert all("openapi" in m for m in page["models"])
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == 12 and len(set(seen)) == 12  # the nine, the two fixtures, the deprecated one
    assert "fal-ai/veo2/image-to-video" in seen
    picked = httpx.get(f"{model_api.url}/api/v1/models", params=[("endpoint_id", VEO), ("endpoint_id", KLING)], headers=headers)
    assert sorted(m["endpoint_id"] for m in picked.json()["models"]) == sorted([VEO, KLING])
    assert "openapi" not in picked.json()["models"][0]
    prices = httpx.get(f"{model_api.url}/api/v1/models/pricing", params={"endpoint_id": VEO}, headers=headers).json()
    assert prices["prices"] == [{"endpoint_id": VEO, "currency": "USD", "unit_price": 0.4, "unit": "second"}]


def test_models_sync_and_list(model_api: Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_"))}
    env.update({"PYTHONPATH": str(ROOT), "FAL_KEY": CANARY_FAL_KEY, "FALGATE_ALLOW_ANONYMOUS": "true",
                # The commands read the same validated settings as `falgate serve` (one configuration).
                "FALGATE_PUBLIC_URL": "https://falgate.example.com",
                "FALGATE_MODELS": f"{KLING},{VEO}", "FALGATE_MODEL_CACHE_DIR": str(tmp_path / "cache"), **_api(model_api)})
    pinned = tmp_path / "pinned"
    sync = subprocess.run([sys.executable, "-m", "app.cli", "models", "sync", "--dir", str(pinned)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert sync.returncode == 0, sync.stderr
    assert len(list(pinned.glob("*.json"))) == 2
    env["FALGATE_MODEL_SCHEMA_DIR"] = str(pinned)
    env["FALGATE_FAL_API_URL"] = "http://127.0.0.1:9/api"  # pinned: no model API needed
    listing = subprocess.run([sys.executable, "-m", "app.cli", "models", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert f"{VEO}\tfolder\timage-to-video" in listing.stdout.splitlines()
    assert "fal-ai/veo2/image-to-video\tbuilt-in\timage-to-video" in listing.stdout.splitlines()
    assert CANARY_FAL_KEY not in listing.stdout + listing.stderr + sync.stdout + sync.stderr


def test_emulator_schemas_of_the_nine_are_current() -> None:
    for spec in CATALOG.values():
        assert (emulator_schemas.FOLDER / emulator_schemas.file_name(spec)).read_text() == emulator_schemas.render(spec)


# --- prices: budgets work for configured models as for the nine -------------------------------------------------


def test_budget_with_configured_price_and_rule(emulator: Server) -> None:
    rules = {VEO: {"kind": "per_second", "field": "duration", "default": "8s"}}
    server = start_gateway(emulator, FALGATE_MODELS=VEO, FALGATE_MODEL_SCHEMA_DIR=str(FIXTURES / "openapi"),
                           FALGATE_PRICES=json.dumps({VEO: 0.15}), FALGATE_PRICE_RULES=json.dumps(rules),
                           FALGATE_BUDGET_PER_DAY="1.0")
    try:
        entry = next(e for e in httpx.get(f"{server.url}/v1/models").json()["models"] if e["id"] == VEO)
        assert entry["billing"]["unit"] == "second" and entry["billing"]["price_per_unit"] == 0.15
        body = {"prompt": "p", "image_url": IMAGE, "duration": "6s"}  # 6 units * 0.15 = 0.90
        assert httpx.post(f"{server.url}/{VEO}", json=body).status_code == 200
        refused = httpx.post(f"{server.url}/{VEO}", json=body)
        assert refused.status_code == 402, refused.text
        assert refused.json()["estimated_cost"] == 0.9
    finally:
        server.stop()


def test_price_from_the_model_api_is_cached(model_api: Server, emulator: Server, tmp_path: Path) -> None:
    env = {"FALGATE_MODELS": VEO, "FALGATE_MODEL_CACHE_DIR": str(tmp_path), **_api(model_api)}
    server = start_gateway(emulator, **env)
    try:
        entry = next(e for e in httpx.get(f"{server.url}/v1/models").json()["models"] if e["id"] == VEO)
        assert entry["billing"]["price_per_unit"] == 0.4
    finally:
        server.stop()
    assert json.loads((tmp_path / "_pricing.json").read_text())[VEO]["unit_price"] == 0.4


def test_image_category_endpoint_gets_an_image(emulator: Server, tmp_path: Path) -> None:
    """An endpoint the emulator's model API lists as text-to-image runs with an image result."""
    flux = "fal-ai/flux/schnell"
    document = json.loads((FIXTURES / "openapi" / "fal-ai__veo3__fast__image-to-video.json").read_text())
    text = json.dumps(document).replace(VEO, flux).replace('"image-to-video"', '"text-to-image"')
    (tmp_path / "flux.json").write_text(text)
    api = start_emulator(FALGATE_EMULATOR_SCHEMA_DIR=str(tmp_path))
    try:
        server = start_gateway(api, FALGATE_MODELS=flux, FALGATE_MODEL_CACHE_DIR=str(tmp_path / "cache"), **_api(api))
        try:
            entry = next(e for e in httpx.get(f"{server.url}/v1/models").json()["models"] if e["id"] == flux)
            assert entry["category"] == "text-to-image"
            with httpx.Client(base_url=server.url, timeout=30) as client:
                result = wait_completed_flow(client, flux, {"prompt": "a fox", "image_url": IMAGE})
            image = result["images"][0]
            assert image["content_type"] == "image/png"
            assert httpx.get(image["url"]).content.startswith(b"\x89PNG")
        finally:
            server.stop()
    finally:
        api.stop()


def test_emulator_mode_serves_configured_models_from_the_schema_folder(tmp_path: Path) -> None:
    """No FAL_KEY: the embedded emulator runs the jobs, and fal's model API is never asked (its key is fake)."""
    port = free_port()
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    name = "fal-ai__veo3__fast__image-to-video.json"
    (pinned / name).write_text((FIXTURES / "openapi" / name).read_text())
    # Kling is not pinned: left out (not strict), without a call to the model API.
    env = {"FALGATE_PORT": str(port), "FALGATE_STORE_URL": f"sqlite:///{tmp_path}/falgate.db",
           "FALGATE_EMULATOR_JOB_SECONDS": "0.5", "FALGATE_MODELS": f"{VEO},{KLING}", "FALGATE_MODELS_STRICT": "false",
           "FALGATE_MODEL_SCHEMA_DIR": str(pinned), "FALGATE_FAL_API_URL": "http://127.0.0.1:9/api"}
    server = Server("gateway-emulated", [sys.executable, "-m", "app.cli", "serve"], port, env)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert wait_completed_flow(client, VEO, VALID[VEO])["video"]["url"]
            assert client.post(f"/{VEO}", json={"prompt": "p", "image_url": IMAGE, "seed": -1}).status_code == 422
    finally:
        server.stop()
    assert "model API is unreachable" not in server.output
    assert "not called in emulator mode" in server.output


def test_model_api_client_follows_pages(model_api: Server) -> None:
    """The gateway's client of the model API, against the emulator, one entry per page."""
    from app.catalog.model_api import fetch_models

    ids = [VEO, KLING, DEPRECATED, "fal-ai/veo2/image-to-video", "fal-ai/unknown/x"]
    found = fetch_models(f"{model_api.url}/api", CANARY_FAL_KEY, ids, page_size=1)
    assert sorted(found) == sorted(ids[:4])
    assert found[DEPRECATED]["metadata"]["status"] == "deprecated"
    assert found[VEO]["openapi"]["info"]["x-fal-metadata"]["endpointId"] == VEO
    pages = [r for r in model_api_requests(model_api) if r["path"] == "/api/v1/models"]
    assert len(pages) >= 4


def model_api_requests(server: Server) -> list[dict]:
    return httpx.get(f"{server.url}/_control/requests").json()
