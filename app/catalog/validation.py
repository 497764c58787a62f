"""Validation entry point: parse a caller's body strictly, then judge it against a model's input model.

The body is judged, never rewritten: nothing here materializes defaults or normalizes values. What is
forwarded to fal is `ParsedBody.forward`, the serialisation of the very object that was validated, so
no parser difference (duplicate keys, integers past 64 bits, lone surrogates) can make fal see another
body than the one judged here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from app.catalog.spec import ModelSpec, ValidationLimits
from app.errors import InvalidInput

__all__ = ["ParsedBody", "parse_body", "validate_input"]


@dataclass(frozen=True, slots=True)
class ParsedBody:
    payload: object  # what validation judges
    forward: bytes  # its JSON serialisation: the bytes fal receives


class _Refused(ValueError):
    def __init__(self, msg: str, kind: str = "json_invalid") -> None:
        super().__init__(msg)
        self.kind = kind


def parse_body(body: bytes) -> ParsedBody:
    """The body as one JSON value, or InvalidInput (fal's 422) for anything fal's parser could read otherwise."""
    try:
        payload = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
        forward = orjson.dumps(payload)  # refuses integers past 64 bits and lone surrogates
    except _Refused as refused:
        raise InvalidInput([{"loc": ["body"], "msg": str(refused), "type": refused.kind}]) from None
    except (ValueError, TypeError, RecursionError, orjson.JSONEncodeError):
        raise InvalidInput([{"loc": ["body"], "msg": "Request body is not valid JSON", "type": "json_invalid"}]) from None
    return ParsedBody(payload, forward)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # The key is not quoted back: it is the caller's text, and could be anything.
        raise _Refused("Request body repeats a key in one JSON object", "json_duplicate_key")
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused("Request body is not valid JSON (NaN and Infinity are not JSON)")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused("Request body has a number too large for a double")
    return value


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
