"""Unit tests of the catalog, the input models and validate_input (pure functions, no server)."""

from __future__ import annotations

import base64
import copy
import json
import time
from types import MappingProxyType
from typing import Any

import pytest

from app.catalog import validation
from app.catalog.models import APP_IDS, CATALOG, catalog_entry
from app.catalog.spec import ModelSpec, ValidationLimits, app_id_of
from app.catalog.validation import validate_input
from tests.invalid_bodies import (
    BOUNDARY_BODIES,
    DEFAULTS,
    ENUMS,
    INT_RANGES,
    INVALID_BODIES,
    MODEL_IDS,
    PIXVERSE,
    TINY_PNG,
    VALID_BODIES,
    WAN_I2V,
)

LIMITS = ValidationLimits()
EIGHT_MB = 8 * 1024 * 1024


def _case_id(case: tuple[Any, ...]) -> str:
    return f"{CATALOG[case[0]].slug}-{'.'.join(case[2][1:]) or 'body'}"


# A data URI's bytes must be the type it declares (issue 11, item 13): each payload starts with a real signature.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SAMPLE_HEADS = {
    "png": _PNG_SIGNATURE + b"\0" * 10,
    "jpeg": b"\xff\xd8\xff\xe0" + b"\0" * 14,
    "webp": b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 2,
    "gif": b"GIF89a" + b"\0" * 12,
}


def _data_uri(decoded_size: int, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(_PNG_SIGNATURE + b"\0" * (decoded_size - 8)).decode()


# --- the tables -----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_valid_body(model_id: str) -> None:
    assert validate_input(CATALOG[model_id], VALID_BODIES[model_id], LIMITS) == []


@pytest.mark.parametrize(
    ("model_id", "body"), BOUNDARY_BODIES, ids=lambda v: CATALOG[v].slug if isinstance(v, str) else None
)
def test_boundary_body_is_valid(model_id: str, body: dict[str, Any]) -> None:
    assert validate_input(CATALOG[model_id], body, LIMITS) == []


@pytest.mark.parametrize("case", INVALID_BODIES, ids=_case_id)
def test_invalid_body(case: tuple[str, object, tuple[str, ...]]) -> None:
    model_id, body, loc = case
    errors = validate_input(CATALOG[model_id], body, LIMITS)
    assert len(errors) == 1, errors
    (error,) = errors
    assert set(error) == {"loc", "msg", "type"}
    assert tuple(error["loc"]) == loc
    assert isinstance(error["msg"], str) and error["msg"]
    assert isinstance(error["type"], str) and error["type"]
    json.dumps(errors)  # plain JSON, ready for a 422 detail


def test_every_invalid_body_breaks_exactly_one_thing() -> None:
    valid = [VALID_BODIES[m] for m in MODEL_IDS] + [body for _, body in BOUNDARY_BODIES]
    for model_id, body, _ in INVALID_BODIES:
        if not isinstance(body, dict):
            continue
        ref = [v for v in valid if _diff(v, body) == 1]
        assert ref, (model_id, body)


def _diff(a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(
        1
        for k in a.keys() | b.keys()
        if k not in a or k not in b or a[k] != b[k] or type(a[k]) is not type(b[k])
    )


def test_tables_cover_every_model_and_rule() -> None:
    assert list(CATALOG) == list(MODEL_IDS)
    for model_id in MODEL_IDS:
        locs = {case[2] for case in INVALID_BODIES if case[0] == model_id}
        assert {("body",), ("body", "prompt"), ("body", "image_url"), ("body", "unknown_field")} <= locs
        assert {("body", f) for f in ENUMS[model_id]} <= locs


# --- messages and privacy -------------------------------------------------------------------------


def test_messages_are_human_readable() -> None:
    spec = CATALOG["fal-ai/kling-video/v2.1/standard/image-to-video"]
    body = {**VALID_BODIES[spec.model_id], "duration": 5}
    assert validate_input(spec, body, LIMITS)[0]["msg"] == "Input should be '5' or '10'"
    wan = CATALOG[WAN_I2V]
    assert validate_input(wan, {**VALID_BODIES[WAN_I2V], "num_frames": 101}, LIMITS)[0]["msg"] == (
        "Input should be less than or equal to 100"
    )
    (err,) = validate_input(wan, {**VALID_BODIES[WAN_I2V], "image_url": "ftp://x/y.png"}, LIMITS)
    assert (
        err["msg"]
        == "image_url must be an http(s) URL or a base64 data URI of a png, jpeg, webp or gif image"
    )
    (err,) = validate_input(CATALOG[PIXVERSE], {**VALID_BODIES[PIXVERSE], "end_image_url": "x"}, LIMITS)
    assert err["type"] == "extra_forbidden"


def test_errors_never_echo_the_input() -> None:
    secret = "my private prompt " * 200
    uri = _data_uri(EIGHT_MB + 1)
    spec = CATALOG[WAN_I2V]
    errors = validate_input(spec, {"prompt": secret, "image_url": uri, "seed": "s3cr3t-seed"}, LIMITS)
    assert [e["loc"] for e in errors] == [["body", "prompt"], ["body", "image_url"], ["body", "seed"]]
    dumped = json.dumps(errors)
    assert "private" not in dumped and "s3cr3t" not in dumped and "AAAA" not in dumped
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


def test_several_errors_are_all_reported() -> None:
    body = {"prompt": " ", "image_url": "ftp://x", "num_frames": 81.5, "resolution": "1080p", "zz": 1}
    errors = validate_input(CATALOG[WAN_I2V], body, LIMITS)
    assert {tuple(e["loc"]) for e in errors} == {
        ("body", "prompt"),
        ("body", "image_url"),
        ("body", "num_frames"),
        ("body", "resolution"),
        ("body", "zz"),
    }


# --- data URIs and limits -------------------------------------------------------------------------


def test_data_uri_size_limit_exact() -> None:
    spec = CATALOG[WAN_I2V]
    assert validate_input(spec, {"prompt": "p", "image_url": _data_uri(EIGHT_MB)}, LIMITS) == []
    (err,) = validate_input(spec, {"prompt": "p", "image_url": _data_uri(EIGHT_MB + 1)}, LIMITS)
    assert err["type"] == "image_too_large" and err["loc"] == ["body", "image_url"]
    assert str(EIGHT_MB) in err["msg"]


@pytest.mark.parametrize("size", [EIGHT_MB - 2, EIGHT_MB - 1, EIGHT_MB])
def test_data_uri_size_with_every_padding(size: int) -> None:
    limits = ValidationLimits(max_image_bytes=size)
    spec = CATALOG[WAN_I2V]
    assert validate_input(spec, {"prompt": "p", "image_url": _data_uri(size)}, limits) == []
    assert (
        validate_input(spec, {"prompt": "p", "image_url": _data_uri(size + 1)}, limits)[0]["type"]
        == "image_too_large"
    )


def test_big_data_uri_is_fast() -> None:
    body = {"prompt": "p", "image_url": _data_uri(EIGHT_MB)}  # ~11.2 MB of JSON
    spec = CATALOG[WAN_I2V]
    start = time.perf_counter()
    assert validate_input(spec, body, LIMITS) == []
    assert time.perf_counter() - start < 0.5  # a few ms on a laptop; generous for loaded CI


@pytest.mark.parametrize(
    "header",
    [
        "data:image/png;base64,",
        "data:image/jpeg;base64,",
        "data:image/webp;base64,",
        "data:image/gif;base64,",
        "DATA:IMAGE/PNG;BASE64,",
    ],
)
def test_image_media_types(header: str) -> None:
    kind = header.lower().split("/")[1].split(";")[0]
    body = {**VALID_BODIES[WAN_I2V], "image_url": header + base64.b64encode(_SAMPLE_HEADS[kind]).decode()}
    assert validate_input(CATALOG[WAN_I2V], body, LIMITS) == []


@pytest.mark.parametrize(
    "header",
    [
        "data:image/jpg;base64,",
        "data:image/bmp;base64,",
        "data:image/png;charset=utf-8;base64,",
        "data:;base64,",
        "data:image/png;base64;base64,",
    ],
)
def test_other_data_uri_headers_rejected(header: str) -> None:
    body = {**VALID_BODIES[WAN_I2V], "image_url": header + TINY_PNG.split(",", 1)[1]}
    (err,) = validate_input(CATALOG[WAN_I2V], body, LIMITS)
    assert err["loc"] == ["body", "image_url"]


def test_prompt_limit_comes_from_limits() -> None:
    spec = CATALOG[WAN_I2V]
    body = {**VALID_BODIES[WAN_I2V], "prompt": "x" * 4000, "negative_prompt": "n" * 4000}
    assert len(validate_input(spec, body, LIMITS)) == 2
    assert validate_input(spec, body, ValidationLimits(max_prompt_length=4000)) == []
    (err,) = validate_input(
        spec, {**VALID_BODIES[WAN_I2V], "prompt": "x" * 11}, ValidationLimits(max_prompt_length=10)
    )
    assert err == {
        "loc": ["body", "prompt"],
        "msg": "String should have at most 10 characters",
        "type": "string_too_long",
    }


def test_tiny_png_is_a_png() -> None:
    assert base64.b64decode(TINY_PNG.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


# --- unknown fields, inputs left alone ------------------------------------------------------------


def test_allow_unknown_fields() -> None:
    spec = CATALOG[WAN_I2V]
    body = {**VALID_BODIES[WAN_I2V], "sync_mode": True, "future_option": {"a": 1}}
    assert [e["type"] for e in validate_input(spec, body, LIMITS)] == ["extra_forbidden", "extra_forbidden"]
    relaxed = ValidationLimits(allow_unknown_fields=True)
    assert validate_input(spec, body, relaxed) == []
    # Known fields are still judged, with the same limits.
    assert validate_input(spec, {**body, "num_frames": 200}, relaxed)[0]["loc"] == ["body", "num_frames"]
    assert validate_input(spec, {**body, "prompt": "x" * 2501}, relaxed)[0]["loc"] == ["body", "prompt"]
    assert validate_input(
        CATALOG[PIXVERSE], {**VALID_BODIES[PIXVERSE], "resolution": "1080p", "duration": "8", "x": 1}, relaxed
    )[0]["loc"] == ["body", "duration"]


def test_open_variants_are_built_once() -> None:
    model = CATALOG[WAN_I2V].input_model
    assert validation._open_variant(model) is validation._open_variant(model)
    assert validation._open_variant(model) is not model


def test_body_is_not_modified() -> None:
    body = {**VALID_BODIES[PIXVERSE], "resolution": "1080p", "extra": [1, 2]}
    before = copy.deepcopy(body)
    validate_input(CATALOG[PIXVERSE], body, ValidationLimits(allow_unknown_fields=True))
    assert body == before


def test_read_only_mapping_payload() -> None:
    assert validate_input(CATALOG[WAN_I2V], MappingProxyType(VALID_BODIES[WAN_I2V]), LIMITS) == []


def test_validation_is_fast() -> None:
    spec = CATALOG[WAN_I2V]
    body = {
        **VALID_BODIES[WAN_I2V],
        "num_frames": 90,
        "resolution": "480p",
        "seed": 7,
        "negative_prompt": "blur",
    }
    rounds = 2000
    start = time.perf_counter()
    for _ in range(rounds):
        validate_input(spec, body, LIMITS)
    assert (time.perf_counter() - start) / rounds < 0.001  # ~10 us typical; loose bound for loaded CI


# --- JSON schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_json_schema(model_id: str) -> None:
    schema = CATALOG[model_id].input_model.model_json_schema()
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text  # self-contained for form generators
    assert schema["required"] == ["prompt", "image_url"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["prompt"]["minLength"] == 1 and props["prompt"]["maxLength"] == 2500
    for field, values in ENUMS[model_id].items():
        assert props[field]["enum"] == list(values), field
    for field, default in DEFAULTS[model_id].items():
        assert props[field]["default"] == default, field
    for field, (low, high) in INT_RANGES.get(model_id, {}).items():
        assert (props[field]["minimum"], props[field]["maximum"]) == (low, high)
    for name, prop in props.items():
        assert prop.get("description"), name
        assert prop.get("default", "") is not None, name  # no fake null defaults


def test_schema_ranges_and_seed() -> None:
    kling = CATALOG["fal-ai/kling-video/v2.1/standard/image-to-video"].input_model.model_json_schema()
    cfg = kling["properties"]["cfg_scale"]
    assert (cfg["type"], cfg["minimum"], cfg["maximum"], cfg["default"]) == ("number", 0, 1, 0.5)
    seedance = CATALOG["fal-ai/bytedance/seedance/v1/lite/image-to-video"].input_model.model_json_schema()
    assert seedance["properties"]["seed"]["minimum"] == -1
    assert CATALOG[WAN_I2V].input_model.model_json_schema()["properties"]["seed"]["minimum"] == 0


# --- catalog --------------------------------------------------------------------------------------


def test_catalog_specs() -> None:
    assert len(CATALOG) == 9
    assert [s.slug for s in CATALOG.values()] == [
        "veo2",
        "wan-pro",
        "kling-2.1-standard",
        "seedance-lite",
        "hailuo-02-pro",
        "wan-i2v",
        "pixverse-4.5",
        "luma-ray-2-flash",
        "magi-distilled",
    ]
    for model_id, spec in CATALOG.items():
        assert isinstance(spec, ModelSpec) and spec.model_id == model_id
        assert spec.app_id == app_id_of(model_id)
    assert APP_IDS == {
        "fal-ai/veo2",
        "fal-ai/wan-pro",
        "fal-ai/kling-video",
        "fal-ai/bytedance",
        "fal-ai/minimax",
        "fal-ai/wan-i2v",
        "fal-ai/pixverse",
        "fal-ai/luma-dream-machine",
        "fal-ai/magi-distilled",
    }


@pytest.mark.parametrize(
    ("model_id", "app_id"),
    [
        ("fal-ai/kling-video/v2.1/standard/image-to-video", "fal-ai/kling-video"),
        ("fal-ai/minimax/hailuo-02/pro/image-to-video", "fal-ai/minimax"),
        ("fal-ai/wan-i2v", "fal-ai/wan-i2v"),
        ("workflows/someone/my-flow", "workflows/someone/my-flow"),
        ("workflows/someone/my-flow/sub/path", "workflows/someone/my-flow"),
        ("comfy/owner/app/x", "comfy/owner/app"),
        ("12345-my-app", "12345/my-app"),
    ],
)
def test_app_id_of(model_id: str, app_id: str) -> None:
    assert app_id_of(model_id) == app_id


@pytest.mark.parametrize(
    "model_id", ["", "flux", "/fal-ai/x", "fal-ai/", "workflows/someone", "comfy//app", "../x"]
)
def test_app_id_of_malformed_ids_match_no_app(model_id: str) -> None:
    assert app_id_of(model_id) not in APP_IDS  # never raises: raw request paths come through here


def test_catalog_entry() -> None:
    spec = CATALOG[WAN_I2V]
    entry = catalog_entry(spec)
    json.dumps(entry)
    assert {k: entry[k] for k in ("id", "app_id", "slug", "title")} == {
        "id": WAN_I2V,
        "app_id": "fal-ai/wan-i2v",
        "slug": "wan-i2v",
        "title": spec.title,
    }
    assert entry["input_schema"] == spec.input_model.model_json_schema()
    assert entry["billing"]["unit"] == "request" and entry["billing"]["price_per_unit"] == 0.40
    assert entry["billing"]["description"] and entry["billing"]["parameters"]["factors"]
    assert catalog_entry(CATALOG["fal-ai/veo2/image-to-video"], prices={"veo2": 0.7})["billing"] == {
        "unit": "second",
        "description": CATALOG["fal-ai/veo2/image-to-video"].billing.description,
        "price_per_unit": 0.7,
        "parameters": {"field": "duration", "default": "5s"},
    }
    entry["input_schema"]["properties"].clear()  # callers get their own copy
    assert catalog_entry(spec)["input_schema"]["properties"]
    patched = catalog_entry(spec, limits=ValidationLimits(max_prompt_length=900))["input_schema"][
        "properties"
    ]
    assert patched["prompt"]["maxLength"] == 900 and patched["negative_prompt"]["maxLength"] == 900
