"""Unit tests of billing rules, price tables and cost estimates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.catalog.billing import (
    DEFAULT_PRICES,
    BillingRule,
    BlocksFactor,
    EnumFactor,
    FactorRule,
    PerSecondRule,
    ThresholdFactor,
    parse_price_table,
)
from app.catalog.models import CATALOG
from app.catalog.spec import estimate_cost
from tests.invalid_bodies import HAILUO, KLING, LUMA, MAGI, PIXVERSE, SEEDANCE, VALID_BODIES, VEO2, WAN_I2V, WAN_PRO


def _units(model_id: str, **fields: Any) -> float:
    return CATALOG[model_id].billing.units({**VALID_BODIES[model_id], **fields})


def test_default_prices_cover_the_catalog() -> None:
    assert set(DEFAULT_PRICES) == {spec.slug for spec in CATALOG.values()}
    assert all(price > 0 for price in DEFAULT_PRICES.values())


@pytest.mark.parametrize(
    ("model_id", "fields", "units"),
    [
        (VEO2, {}, 5),
        (VEO2, {"duration": "5s"}, 5),
        (VEO2, {"duration": "6s"}, 6),
        (VEO2, {"duration": "8s"}, 8),
        (KLING, {}, 5),
        (KLING, {"duration": "10"}, 10),
        (SEEDANCE, {}, 5),
        (SEEDANCE, {"duration": "10", "resolution": "1080p"}, 10),
        (WAN_PRO, {}, 1),
        (WAN_PRO, {"seed": 3}, 1),
        (HAILUO, {}, 1),
        (HAILUO, {"prompt_optimizer": False}, 1),
    ],
)
def test_per_second_and_per_request(model_id: str, fields: dict[str, Any], units: float) -> None:
    assert _units(model_id, **fields) == units


@pytest.mark.parametrize(
    ("fields", "units"),
    [
        ({}, 1.0),  # 720p, 81 frames
        ({"resolution": "720p", "num_frames": 81}, 1.0),
        ({"resolution": "480p"}, 0.5),
        ({"num_frames": 82}, 1.25),
        ({"num_frames": 100, "resolution": "480p"}, 0.625),
        ({"frames_per_second": 24, "num_inference_steps": 80}, 1.0),  # not billed
    ],
)
def test_wan_i2v(fields: dict[str, Any], units: float) -> None:
    assert _units(WAN_I2V, **fields) == units


@pytest.mark.parametrize(
    ("fields", "units"),
    [
        ({}, 1.0),  # 720p, 96 frames
        ({"num_frames": 96, "resolution": "480p"}, 0.5),
        ({"num_frames": 97}, 2.0),  # a started block counts in full
        ({"num_frames": 120}, 2.0),
        ({"num_frames": 121}, 3.0),
        ({"num_frames": 144}, 3.0),
        ({"num_frames": 192}, 5.0),
        ({"num_frames": 192, "resolution": "480p"}, 2.5),
        ({"num_inference_steps": 32}, 1.0),  # seed-models.md states no step rule
    ],
)
def test_magi(fields: dict[str, Any], units: float) -> None:
    assert _units(MAGI, **fields) == units


@pytest.mark.parametrize(
    ("fields", "units"),
    [
        ({}, 1.0),
        ({"duration": "5"}, 1.0),
        ({"duration": "8"}, 2.0),
        ({"resolution": "1080p"}, 1.0),
        ({"resolution": "360p", "duration": "8"}, 2.0),
    ],
)
def test_pixverse(fields: dict[str, Any], units: float) -> None:
    assert _units(PIXVERSE, **fields) == units


@pytest.mark.parametrize(
    ("fields", "units"),
    [
        ({}, 1.0),
        ({"resolution": "540p"}, 1.0),
        ({"resolution": "720p"}, 2.0),
        ({"resolution": "1080p"}, 4.0),
        ({"duration": "5s", "loop": True}, 1.0),
    ],
)
def test_luma(fields: dict[str, Any], units: float) -> None:
    assert _units(LUMA, **fields) == units


def test_estimate_cost() -> None:
    assert estimate_cost(CATALOG[VEO2], VALID_BODIES[VEO2], DEFAULT_PRICES) == 2.5
    assert estimate_cost(CATALOG[VEO2], {**VALID_BODIES[VEO2], "duration": "8s"}, DEFAULT_PRICES) == 4.0
    assert estimate_cost(CATALOG[KLING], {**VALID_BODIES[KLING], "duration": "10"}, DEFAULT_PRICES) == 0.5
    assert (
        estimate_cost(CATALOG[WAN_I2V], {**VALID_BODIES[WAN_I2V], "resolution": "480p"}, DEFAULT_PRICES)
        == 0.2
    )
    assert (
        estimate_cost(CATALOG[LUMA], {**VALID_BODIES[LUMA], "resolution": "1080p"}, {"luma-ray-2-flash": 0.1})
        == 0.4
    )


def test_estimate_cost_rounds_to_six_decimals() -> None:
    prices = {**DEFAULT_PRICES, "wan-i2v": 0.1234567}
    cost = estimate_cost(CATALOG[WAN_I2V], {**VALID_BODIES[WAN_I2V], "num_frames": 90}, prices)
    assert cost == round(0.1234567 * 1.25, 6) == 0.154321


def test_estimate_cost_falls_back_to_default_price() -> None:
    assert estimate_cost(CATALOG[WAN_PRO], VALID_BODIES[WAN_PRO], {}) == DEFAULT_PRICES["wan-pro"]


def test_free_model() -> None:
    assert estimate_cost(CATALOG[HAILUO], VALID_BODIES[HAILUO], {"hailuo-02-pro": 0}) == 0.0


@pytest.mark.parametrize(
    ("rule", "body"),
    [
        (PerSecondRule("d"), {"duration": 5}),
        (PerSecondRule("d"), {"duration": "five"}),
        (
            FactorRule("f", factors=(EnumFactor("resolution", "720p", (("720p", 1.0),)),)),
            {"resolution": "4k"},
        ),
        (FactorRule("f", factors=(ThresholdFactor("n", 81, 81, 1.25),)), {"n": 90.0}),
        (FactorRule("f", factors=(BlocksFactor("n", 96, 96, 24),)), {"n": True}),
    ],
)
def test_unpriceable_values_raise(rule: BillingRule, body: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cannot bill"):
        rule.units(body)


def test_rules_are_hashable_and_describable() -> None:
    for spec in CATALOG.values():
        hash(spec)  # frozen specs can key caches
        assert spec.billing.unit in ("request", "second")
        assert spec.billing.description
        json.dumps(spec.billing.parameters())
    assert CATALOG[VEO2].billing.unit == "second"
    assert CATALOG[PIXVERSE].billing.parameters() == {
        "factors": [{"kind": "enum", "field": "duration", "default": "5", "factors": {"5": 1.0, "8": 2.0}}],
    }


# --- price tables -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", "  \n"])
def test_price_table_defaults(raw: str | None) -> None:
    table = parse_price_table(raw)
    assert table == DEFAULT_PRICES and table is not DEFAULT_PRICES


def test_price_table_merges_over_defaults() -> None:
    table = parse_price_table('{"veo2": 0.75, "wan-i2v": 1, "magi-distilled": 0}')
    assert table == {**DEFAULT_PRICES, "veo2": 0.75, "wan-i2v": 1.0, "magi-distilled": 0.0}
    assert all(type(v) is float for v in table.values())
    assert parse_price_table("{}") == DEFAULT_PRICES


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{veo2: 1}", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("0.5", "must be a JSON object"),
        ('{"flux-dev": 0.1}', "unknown model slug 'flux-dev'"),
        ('{"veo2": -0.01}', "must not be negative"),
        ('{"veo2": "0.5"}', "must be a number"),
        ('{"veo2": null}', "must be a number"),
        ('{"veo2": true}', "must be a number"),
        ('{"veo2": NaN}', "must be a number"),
        ('{"veo2": Infinity}', "must be a number"),
    ],
)
def test_price_table_errors(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_price_table(raw)


def test_default_prices_are_not_mutated() -> None:
    before = dict(DEFAULT_PRICES)
    parse_price_table('{"veo2": 9}')
    assert DEFAULT_PRICES == before
