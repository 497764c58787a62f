"""The catalog of seeded models: ids, fal app ids, input models and billing rules."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel

from app.catalog import inputs
from app.catalog.billing import (
    DEFAULT_PRICES,
    BillingRule,
    BlocksFactor,
    EnumFactor,
    FactorRule,
    PerSecondRule,
    PriceTable,
    ThresholdFactor,
)
from app.catalog.schema_documents import input_json_schema
from app.catalog.spec import ModelSpec, ValidationLimits, app_id_of

__all__ = ["APP_IDS", "CATALOG", "catalog_entry"]


def _spec(
    model_id: str, slug: str, title: str, input_model: type[BaseModel], billing: BillingRule
) -> ModelSpec:
    return ModelSpec(model_id, app_id_of(model_id), slug, title, input_model, billing)


_RES_HALF = (("480p", 0.5), ("720p", 1.0))
_PER_REQUEST = "Price per request (fal states no per-unit rule); set in the price table."

# Seed order. The seed lists the kling model twice; it is one entry here.
_SPECS: tuple[ModelSpec, ...] = (
    _spec(
        "fal-ai/veo2/image-to-video",
        "veo2",
        "Veo 2 (image to video)",
        inputs.Veo2Input,
        PerSecondRule("Price per second of video: duration 5s..8s (default 5s).", default="5s"),
    ),
    _spec(
        "fal-ai/wan-pro/image-to-video",
        "wan-pro",
        "Wan Pro (image to video)",
        inputs.WanProInput,
        BillingRule(_PER_REQUEST + " One 6 s 1080p video."),
    ),
    _spec(
        "fal-ai/kling-video/v2.1/standard/image-to-video",
        "kling-2.1-standard",
        "Kling 2.1 Standard (image to video)",
        inputs.KlingStandardInput,
        PerSecondRule('Price per second of video: duration "5" or "10" (default "5").'),
    ),
    _spec(
        "fal-ai/bytedance/seedance/v1/lite/image-to-video",
        "seedance-lite",
        "Seedance 1.0 Lite (image to video)",
        inputs.SeedanceLiteInput,
        PerSecondRule('Price per second of video: duration "5" or "10" (default "5").'),
    ),
    _spec(
        "fal-ai/minimax/hailuo-02/pro/image-to-video",
        "hailuo-02-pro",
        "Hailuo-02 Pro (image to video)",
        inputs.HailuoProInput,
        BillingRule(_PER_REQUEST + " One 1080p video."),
    ),
    _spec(
        "fal-ai/wan-i2v",
        "wan-i2v",
        "Wan 2.1 (image to video)",
        inputs.WanI2VInput,
        FactorRule(
            "480p 0.5 unit, 720p 1 unit (default 720p); num_frames above 81 costs 1.25x.",
            factors=(
                EnumFactor("resolution", "720p", _RES_HALF),
                ThresholdFactor("num_frames", 81, 81, 1.25),
            ),
        ),
    ),
    _spec(
        "fal-ai/pixverse/v4.5/image-to-video",
        "pixverse-4.5",
        "PixVerse 4.5 (image to video)",
        inputs.PixverseInput,
        FactorRule(
            'One unit per video; duration "8" costs 2x (default "5").',
            factors=(EnumFactor("duration", "5", (("5", 1.0), ("8", 2.0))),),
        ),
    ),
    _spec(
        "fal-ai/luma-dream-machine/ray-2-flash/image-to-video",
        "luma-ray-2-flash",
        "Luma Ray 2 Flash (image to video)",
        inputs.LumaRay2FlashInput,
        FactorRule(
            "One unit per 5 s video at 540p (default); 720p costs 2x, 1080p 4x.",
            factors=(EnumFactor("resolution", "540p", (("540p", 1.0), ("720p", 2.0), ("1080p", 4.0))),),
        ),
    ),
    _spec(
        "fal-ai/magi-distilled/image-to-video",
        "magi-distilled",
        "MAGI-1 Distilled (image to video)",
        inputs.MagiDistilledInput,
        FactorRule(
            "480p 0.5 unit, 720p 1 unit (default 720p), times 1 + one per started block of 24 frames beyond 96 "
            "(120 frames = 2x, 121 = 3x, 192 = 5x).",
            factors=(EnumFactor("resolution", "720p", _RES_HALF), BlocksFactor("num_frames", 96, 96, 24)),
        ),
    ),
)

CATALOG: Mapping[str, ModelSpec] = MappingProxyType({spec.model_id: spec for spec in _SPECS})
APP_IDS: frozenset[str] = frozenset(spec.app_id for spec in _SPECS)


@cache
def _input_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def catalog_entry(
    spec: ModelSpec, prices: PriceTable = DEFAULT_PRICES, limits: ValidationLimits | None = None
) -> dict[str, Any]:
    """JSON for GET /v1/models. `limits`, when given, puts the configured prompt length into the schema."""
    if spec.schema is not None:
        schema = input_json_schema(spec.schema.doc)
    else:
        schema = copy.deepcopy(_input_schema(spec.input_model))  # callers may mutate their copy
    if limits is not None:
        for name in ("prompt", "negative_prompt"):
            field = schema.get("properties", {}).get(name)
            if field is not None:
                field["maxLength"] = limits.max_prompt_length
    price = prices.get(spec.slug, DEFAULT_PRICES.get(spec.slug, spec.unit_price))
    return {
        "id": spec.model_id,
        "app_id": spec.app_id,
        "slug": spec.slug,
        "title": spec.title,
        "input_schema": schema,
        "billing": {
            "unit": spec.billing.unit,
            "description": spec.billing.description,
            "price_per_unit": price,
            "parameters": spec.billing.parameters(),
        },
        "category": spec.category,
        "source": spec.source,  # built-in | folder | model-api | cache: where the input schema came from
    }
