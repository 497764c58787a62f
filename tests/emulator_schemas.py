"""The emulator's model API documents for the nine built-in models (app/emulator/schemas), built from their
pydantic input models in fal's document format. The emulator never imports the gateway's catalog, so the
documents are committed; tests/test_model_api.py checks they still match what this builds.

Regenerate: PYTHONPATH=. python -m tests.emulator_schemas
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.catalog.models import CATALOG
from app.catalog.spec import ModelSpec

FOLDER = Path(__file__).resolve().parent.parent / "app" / "emulator" / "schemas"


def document(spec: ModelSpec) -> dict[str, Any]:
    assert spec.input_model is not None
    schema = spec.input_model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    name = spec.input_model.__name__
    schema["x-fal-order-properties"] = list(schema.get("properties", {}))
    components[name] = schema
    components["VideoOutput"] = {
        "type": "object", "title": "VideoOutput", "required": ["video"],
        "properties": {"video": {"type": "object", "properties": {"url": {"type": "string"}}}, "seed": {"type": "integer"}},
    }
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
    result = {"200": {"description": "Result", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VideoOutput"}}}}}
    return {
        "openapi": "3.0.4",
        "info": {
            "title": f"Queue OpenAPI for {spec.model_id}",
            "version": "1.0.0",
            "description": spec.title,
            "x-fal-metadata": {"endpointId": spec.model_id, "category": "image-to-video", "display_name": spec.title},
        },
        "paths": {
            f"/{spec.model_id}": {"post": {"requestBody": body, "responses": {"200": {"description": "Queued"}}}},
            f"/{spec.model_id}/requests/{{request_id}}": {"get": {"responses": result}},
        },
        "components": {"schemas": components},
    }


def file_name(spec: ModelSpec) -> str:
    return spec.model_id.replace("/", "__") + ".json"


def render(spec: ModelSpec) -> str:
    return json.dumps(document(spec), indent=1) + "\n"


if __name__ == "__main__":
    for spec in CATALOG.values():
        (FOLDER / file_name(spec)).write_text(render(spec), encoding="utf-8")
