"""What the gateway knows of one model, and the operator's validation limits: the catalog's leaf module.

Every other catalog module (inputs, validation, billing, the model table) builds on these, and none of
them is imported back here but the billing rule types.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from app.catalog.billing import DEFAULT_PRICES, BillingRule, PriceTable
from app.catalog.file_urls import FileUrlPolicy

# fal keeps a third segment for these namespaces: "workflows/<owner>/<name>/...".
_NAMESPACES = frozenset({"workflows", "comfy"})
# Legacy numeric ids ("1234-my-app") mean "1234/my-app", as in fal's clients.
_LEGACY_ID = re.compile(r"([0-9]+)-([a-zA-Z0-9-]+)")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    model_id: str  # "fal-ai/kling-video/v2.1/standard/image-to-video"
    app_id: str  # "fal-ai/kling-video": the owner/app part fal uses in per-request queue paths
    slug: str  # short stable name, the key of price tables
    title: str
    input_model: type[BaseModel] | None  # the nine's pydantic model; None for a model judged by `schema`
    billing: BillingRule
    # Configured models (FALGATE_MODELS): the compiled input schema from fal's own document, and where it came
    # from. A SchemaInput (app/catalog/schema_validation.py); typed loosely to keep this the leaf module.
    schema: Any = None
    category: str = "image-to-video"
    source: str = "built-in"  # built-in | folder | cache | model-api
    unit_price: float | None = None  # USD per billing unit when no price table names the slug


def app_id_of(model_id: str) -> str:
    """fal's owner/app for any endpoint id: the first two segments, three under workflows/ and comfy/.

    Never raises: callers feed it raw request paths, and a malformed id (one segment, empty segments)
    comes back as-is or truncated, which matches no catalog app and so ends in a 404 upstream of here.
    A legacy numeric id ("1234-my-app") maps to "1234/my-app", as in fal's clients.
    """
    parts = model_id.split("/")
    if len(parts) == 1:
        legacy = _LEGACY_ID.fullmatch(model_id)
        return f"{legacy[1]}/{legacy[2]}" if legacy else model_id
    keep = 3 if parts[0] in _NAMESPACES else 2
    return "/".join(parts[:keep])



@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Operator-tunable limits, handed to the input models as pydantic validation `context`."""

    max_prompt_length: int = 2500
    max_image_bytes: int = 8 * 1024 * 1024  # decoded size cap for data: URIs
    allow_unknown_fields: bool = False
    file_urls: FileUrlPolicy = FileUrlPolicy()  # which hosts http(s) file URLs may name


def unit_price(spec: ModelSpec, prices: PriceTable) -> float:
    """USD per billing unit of a model. Slugs missing from `prices` use the defaults."""
    price = prices.get(spec.slug)
    if price is None:
        price = DEFAULT_PRICES[spec.slug] if spec.unit_price is None else spec.unit_price
    return price


def estimate_cost(spec: ModelSpec, body: Mapping[str, Any], prices: PriceTable) -> float:
    """Estimated USD cost of one request, rounded to 6 decimals: what the ledger reserves and a quote shows."""
    return round(unit_price(spec, prices) * spec.billing.units(body), 6)
