"""Schema-driven validation of configured models, in process: the OpenAPI 3.0 spellings fal's documents may
use, schemas that allow extra fields, and the error shape. The end-to-end cases are in
tests/test_configured_models.py."""

from __future__ import annotations

import pytest

from app.catalog.schema_documents import DocumentError, parse_document
from app.catalog.schema_validation import SchemaInput
from app.catalog.spec import ValidationLimits

ENDPOINT = "owner/app/endpoint"
LIMITS = ValidationLimits()


def _schema(properties: dict, **extra) -> SchemaInput:
    document = {
        "openapi": "3.0.4",
        "info": {"x-fal-metadata": {"endpointId": ENDPOINT, "category": "image-to-video"}},
        "paths": {f"/{ENDPOINT}": {"post": {"requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/In"}}}}}}},
        "components": {"schemas": {"In": {"type": "object", "properties": properties, **extra},
                                   "Extras": {"type": "object", "properties": {"a": {"type": "integer"}},
                                              "additionalProperties": True}}},
    }
    return SchemaInput(parse_document(document))


def _types(schema: SchemaInput, body: dict, limits: ValidationLimits = LIMITS) -> list[tuple[list, str]]:
    return [(err["loc"], err["type"]) for err in schema.validate(body, limits)]


def test_openapi_30_nullable_and_boolean_exclusive_minimum() -> None:
    schema = _schema({"scale": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "nullable": True}})
    assert _types(schema, {"scale": None}) == []
    assert _types(schema, {"scale": 0.1}) == []
    assert _types(schema, {"scale": 0}) == [(["body", "scale"], "greater_than")]


def test_extra_fields_where_the_schema_allows_them() -> None:
    schema = _schema({"extras": {"$ref": "#/components/schemas/Extras"}})
    assert _types(schema, {"extras": {"a": 1, "anything": True}}) == []
    assert _types(schema, {"other": 1}) == [(["body", "other"], "extra_forbidden")]
    assert _types(_schema({}, additionalProperties=True), {"other": 1}) == []
    assert _types(schema, {"other": 1}, ValidationLimits(allow_unknown_fields=True)) == []


def test_prompt_length_limit_applies_as_for_the_nine() -> None:
    schema = _schema({"prompt": {"type": "string"}})
    assert _types(schema, {"prompt": "x" * 11}, ValidationLimits(max_prompt_length=10)) == [
        (["body", "prompt"], "string_too_long")
    ]


def test_errors_carry_no_value() -> None:
    schema = _schema({"mode": {"enum": ["a", "b"]}, "n": {"type": "integer", "maximum": 3}})
    errors = schema.validate({"mode": "private-words", "n": 99}, LIMITS)
    assert all(set(err) == {"loc", "msg", "type"} for err in errors)
    assert "private-words" not in repr(errors) and "99" not in repr(errors)


def test_a_document_without_the_submit_path_is_refused() -> None:
    with pytest.raises(DocumentError, match="no submit path"):
        parse_document({"info": {"x-fal-metadata": {"endpointId": ENDPOINT}}, "paths": {}})
