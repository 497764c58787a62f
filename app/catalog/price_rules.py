"""FALGATE_PRICE_RULES: how many billing units a configured model's body costs, in the nine's rule kinds.

JSON by endpoint id, e.g.
  {"fal-ai/veo3/fast/image-to-video": {"kind": "per_second", "field": "duration", "default": "8s"},
   "fal-ai/x": {"kind": "factors", "factors": [
       {"kind": "enum", "field": "resolution", "default": "720p", "factors": {"480p": 0.5, "720p": 1}},
       {"kind": "blocks", "field": "num_frames", "default": 96, "base": 96, "block": 24},
       {"kind": "threshold", "field": "num_frames", "default": 81, "above": 81, "factor": 1.25}]}}
A model without a rule costs one unit per request.
"""

from __future__ import annotations

from typing import Any

from app.catalog.billing import (
    BillingRule,
    BlocksFactor,
    EnumFactor,
    Factor,
    FactorRule,
    PerSecondRule,
    ThresholdFactor,
    json_object_setting,
)

PER_REQUEST = BillingRule("One unit per request (no FALGATE_PRICE_RULES entry).")


def parse_price_rules(raw: str | None) -> dict[str, BillingRule]:
    """Rules by endpoint id; ValueError naming the entry for anything malformed."""
    parsed = json_object_setting(raw, "price rules", '{"owner/app/endpoint": {"kind": "per_request"}}')
    rules: dict[str, BillingRule] = {}
    for endpoint_id, spec in parsed.items():
        try:
            rules[endpoint_id] = _rule(spec)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"price rule of {endpoint_id!r}: {exc}") from None
    return rules


def _rule(spec: Any) -> BillingRule:
    if not isinstance(spec, dict):
        raise TypeError("must be an object with a kind")
    kind = spec.get("kind", "per_request")
    if kind == "per_request":
        return BillingRule(spec.get("description", "One unit per request."))
    if kind == "per_second":
        field, default = str(spec.get("field", "duration")), str(spec.get("default", "5"))
        return PerSecondRule(spec.get("description", f"One unit per second of {field} (default {default})."),
                             field=field, default=default)
    if kind == "factors":
        factors = tuple(_factor(item) for item in spec.get("factors") or ())
        return FactorRule(spec.get("description", "One unit per request, times its factors."), factors=factors)
    raise ValueError(f"unknown kind {kind!r} (per_request, per_second or factors)")


def _factor(spec: dict[str, Any]) -> Factor:
    kind = spec["kind"]
    if kind == "enum":
        table = tuple((str(key), float(value)) for key, value in dict(spec["factors"]).items())
        return EnumFactor(str(spec["field"]), str(spec["default"]), table)
    if kind == "blocks":
        return BlocksFactor(str(spec["field"]), int(spec["default"]), int(spec["base"]), int(spec["block"]))
    if kind == "threshold":
        return ThresholdFactor(str(spec["field"]), int(spec["default"]), int(spec["above"]), float(spec["factor"]))
    raise ValueError(f"unknown factor kind {kind!r} (enum, blocks or threshold)")
