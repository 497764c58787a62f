"""Cost estimation: per-model billing rules (units) times a configurable USD price per unit.

A rule turns a request body into a number of billing units, applying fal's defaults for absent
fields. The body is expected to have passed `validate_input`; a value a rule cannot price raises
ValueError rather than being guessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

PriceTable = Mapping[str, float]  # model slug -> USD per unit

# Defaults, meant to be overridden from configuration through parse_price_table. Taken from fal's public
# pricing pages at the time of writing; fal's prices change, so treat them as estimates.
DEFAULT_PRICES: dict[str, float] = {
    "veo2": 0.50,  # per second of video ($2.50 for the default 5 s)
    "wan-pro": 0.80,  # per request (one 6 s 1080p video)
    "kling-2.1-standard": 0.05,  # per second of video
    "seedance-lite": 0.036,  # per second of video (~$0.18 for 5 s)
    "hailuo-02-pro": 0.48,  # per request (6 s 1080p)
    "wan-i2v": 0.40,  # per unit: 720p/81 frames = 1 unit ($0.20 at 480p)
    "pixverse-4.5": 0.20,  # per unit: one 5 s video; 8 s = 2 units
    "luma-ray-2-flash": 0.20,  # per unit: 540p 5 s; 720p 2 units, 1080p 4
    "magi-distilled": 0.32,  # per unit: 720p 96 frames
}


@dataclass(frozen=True, slots=True)
class BillingRule:
    """Flat price: one unit per request."""

    unit: ClassVar[str] = "request"
    description: str

    def units(self, body: Mapping[str, Any]) -> float:
        return 1.0

    def parameters(self) -> dict[str, Any]:
        """Machine-readable rule parameters, shown in GET /v1/models."""
        return {}


@dataclass(frozen=True, slots=True)
class PerSecondRule(BillingRule):
    """One unit per second of video, read from a duration enum such as "5" or "5s"."""

    unit: ClassVar[str] = "second"
    field: str = "duration"
    default: str = "5"

    def units(self, body: Mapping[str, Any]) -> float:
        value = body.get(self.field, self.default)
        text = value.removesuffix("s") if isinstance(value, str) else ""
        if not text.isdigit():
            raise ValueError(f"cannot bill {self.field}={value!r}")
        return float(text)

    def parameters(self) -> dict[str, Any]:
        return {"field": self.field, "default": self.default}


@dataclass(frozen=True, slots=True)
class EnumFactor:
    """Multiplier chosen by an enum field's value (absent: the fal default)."""

    field: str
    default: str
    table: tuple[tuple[str, float], ...]  # a tuple, not a dict, so rules stay hashable

    def factor(self, body: Mapping[str, Any]) -> float:
        value = body.get(self.field, self.default)
        for key, factor in self.table:
            if key == value:
                return factor
        raise ValueError(f"cannot bill {self.field}={value!r}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "enum", "field": self.field, "default": self.default, "factors": dict(self.table)}


@dataclass(frozen=True, slots=True)
class ThresholdFactor:
    """`factor` when an integer field exceeds `above`, else 1."""

    field: str
    default: int
    above: int
    factor_above: float

    def factor(self, body: Mapping[str, Any]) -> float:
        return self.factor_above if _int_field(body, self.field, self.default) > self.above else 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "threshold",
            "field": self.field,
            "default": self.default,
            "above": self.above,
            "factor": self.factor_above,
        }


@dataclass(frozen=True, slots=True)
class BlocksFactor:
    """1 + one more for each started `block` of an integer field beyond `base`.

    A started block counts in full (ceil): fal bills whole units, and an estimate used for
    budgets should not come out under the real charge.
    """

    field: str
    default: int
    base: int
    block: int

    def factor(self, body: Mapping[str, Any]) -> float:
        extra = max(0, _int_field(body, self.field, self.default) - self.base)
        return float(1 + math.ceil(extra / self.block))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "blocks",
            "field": self.field,
            "default": self.default,
            "base": self.base,
            "block": self.block,
        }


Factor = EnumFactor | ThresholdFactor | BlocksFactor


@dataclass(frozen=True, slots=True)
class FactorRule(BillingRule):
    """Per request, times the product of its factors."""

    factors: tuple[Factor, ...] = ()

    def units(self, body: Mapping[str, Any]) -> float:
        result = 1.0
        for factor in self.factors:
            result *= factor.factor(body)
        return result

    def parameters(self) -> dict[str, Any]:
        return {"factors": [factor.describe() for factor in self.factors]}


def _int_field(body: Mapping[str, Any], field: str, default: int) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"cannot bill {field}={value!r}")
    return value


def json_object_setting(raw: str | None, what: str, example: str) -> dict[str, Any]:
    """A setting holding a JSON object; {} when unset or blank, ValueError saying what is wrong otherwise."""
    if raw is None or not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc.msg} (at position {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"{what} must be a JSON object like {example}")
    return parsed


def parse_price_table(raw: str | None) -> dict[str, float]:
    """A JSON object {"slug" or "endpoint/id": usd_per_unit, ...} merged over DEFAULT_PRICES; None/blank gives
    the defaults."""
    prices = dict(DEFAULT_PRICES)
    parsed = json_object_setting(raw, "price table", '{"veo2": 0.5}')
    for slug, price in parsed.items():
        # Configured models (FALGATE_MODELS) are priced by endpoint id, which always has a slash.
        if slug not in DEFAULT_PRICES and "/" not in slug:
            raise ValueError(f"price table: unknown model slug {slug!r}; known: {', '.join(DEFAULT_PRICES)}")
        if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
            raise ValueError(f"price table: price of {slug!r} must be a number")
        if price < 0:
            raise ValueError(f"price table: price of {slug!r} must not be negative")
        prices[slug] = float(price)
    return prices
