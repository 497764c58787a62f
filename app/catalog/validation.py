"""Validation entry point: judge a caller's body against a model's pydantic input model.

The body is only judged, never rewritten: the gateway forwards the caller's JSON untouched, so
nothing here materializes defaults or normalizes values.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from app.catalog.spec import ModelSpec, ValidationLimits

__all__ = ["validate_input"]


_NOT_AN_OBJECT: dict[str, Any] = {
    "loc": ["body"],
    "msg": "Input should be a JSON object",
    "type": "dict_type",
}


@cache
def _open_variant(model: type[BaseModel]) -> type[BaseModel]:
    """The same input model with extra="allow", built once per model (not per request)."""
    namespace = {
        "model_config": ConfigDict(extra="allow"),
        "__module__": model.__module__,
        "__doc__": model.__doc__,
    }
    return type(f"{model.__name__}Open", (model,), namespace)


def validate_input(spec: ModelSpec, payload: object, limits: ValidationLimits) -> list[dict[str, Any]]:
    """[] when valid (against the pydantic model, or a configured model's schema document); otherwise fal/pydantic-shaped errors: [{"loc": ["body", ...], "msg", "type"}].

    Errors never carry the offending value (no "input"/"ctx"/"url"): data URIs can be megabytes
    and prompts may be private.
    """
    if isinstance(payload, Mapping) and not isinstance(payload, dict):
        payload = dict(payload)  # strict-mode models accept only real dicts
    if not isinstance(payload, dict):
        return [dict(_NOT_AN_OBJECT, loc=["body"])]
    if spec.schema is not None:
        return spec.schema.validate(payload, limits)
    assert spec.input_model is not None
    model = _open_variant(spec.input_model) if limits.allow_unknown_fields else spec.input_model
    try:
        model.__pydantic_validator__.validate_python(payload, context=limits)
    except ValidationError as exc:
        return [
            {"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
    return []
