"""fal's per-endpoint OpenAPI documents: read one, find its input schema, and ready it for a validator.

A document (as fal's model API serves it with `expand=openapi-3.0`, or as a file in
FALGATE_MODEL_SCHEMA_DIR) names its endpoint in `info.x-fal-metadata.endpointId`; the submit path's
`requestBody` is a `$ref` into `components.schemas`. This module only reads and rewrites JSON: the
validator itself lives in app/catalog/schema_validation.py.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REF_PREFIX = "#/components/schemas/"


class DocumentError(ValueError):
    """A document that is not a usable fal endpoint document; the message names what is missing."""


@dataclass(frozen=True, slots=True)
class EndpointDocument:
    endpoint_id: str
    category: str
    status: str  # "active" | "deprecated" (from the model API's metadata, or the document's)
    input_name: str  # the components.schemas key of the submit body
    document: dict[str, Any]

    @property
    def components(self) -> dict[str, Any]:
        return self.document.get("components", {}).get("schemas", {})

    @property
    def input_schema(self) -> dict[str, Any]:
        return self.components[self.input_name]

    @property
    def deprecated(self) -> bool:
        return self.status == "deprecated"


def endpoint_id_of(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    meta = (document.get("info") or {}).get("x-fal-metadata") or {}
    endpoint_id = meta.get("endpointId")
    return endpoint_id if isinstance(endpoint_id, str) and endpoint_id else None


def parse_document(document: Any, metadata: dict[str, Any] | None = None) -> EndpointDocument:
    """The endpoint a document describes; `metadata` is the model API's entry metadata, when it came from there."""
    endpoint_id = endpoint_id_of(document)
    if endpoint_id is None:
        raise DocumentError("no info.x-fal-metadata.endpointId")
    meta = {**(document["info"].get("x-fal-metadata") or {}), **(metadata or {})}
    post = ((document.get("paths") or {}).get(f"/{endpoint_id}") or {}).get("post")
    if not isinstance(post, dict):
        raise DocumentError(f"{endpoint_id}: no submit path POST /{endpoint_id}")
    try:
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    except (KeyError, TypeError):
        raise DocumentError(f"{endpoint_id}: the submit path has no requestBody schema $ref") from None
    if not isinstance(ref, str) or not ref.startswith(_REF_PREFIX):
        raise DocumentError(f"{endpoint_id}: the requestBody $ref must point into #/components/schemas")
    name = ref.removeprefix(_REF_PREFIX)
    if not isinstance(document.get("components", {}).get("schemas", {}).get(name), dict):
        raise DocumentError(f"{endpoint_id}: components.schemas has no {name!r}")
    status = meta.get("status") or ("deprecated" if post.get("deprecated") else "active")
    return EndpointDocument(endpoint_id, str(meta.get("category") or "unknown"), str(status), name, document)


def read_folder(folder: Path) -> dict[str, dict[str, Any]]:
    """Every *.json document in `folder` by endpoint id; files that name no endpoint are skipped."""
    found: dict[str, dict[str, Any]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        endpoint_id = endpoint_id_of(document)
        if endpoint_id is not None:
            found[endpoint_id] = document
    return found


def file_name(endpoint_id: str) -> str:
    return endpoint_id.replace("/", "__") + ".json"


def field_order(schema: dict[str, Any]) -> list[str]:
    """The form order fal gives (`x-fal-order-properties`), then any remaining properties."""
    props = list((schema.get("properties") or {}).keys())
    order = [name for name in schema.get("x-fal-order-properties") or [] if name in props]
    return order + [name for name in props if name not in order]


def validator_schema(doc: EndpointDocument, closed: bool) -> dict[str, Any]:
    """A JSON Schema (2020-12) for the submit body: the input `$ref` with the components beside it.

    OpenAPI 3.0 spellings are rewritten to JSON Schema: `nullable: true` becomes a null branch, and a
    boolean `exclusiveMinimum`/`exclusiveMaximum` (Draft 4 style) becomes the numeric form. `closed`
    adds `additionalProperties: false` to every object schema that declares properties and does not
    say otherwise itself, so unknown fields are refused as for the nine.
    """
    components = {name: _normalize(copy.deepcopy(schema), closed) for name, schema in doc.components.items()}
    return {"$ref": _REF_PREFIX + doc.input_name, "components": {"schemas": components}}


def _normalize(node: Any, closed: bool) -> Any:
    if isinstance(node, list):
        return [_normalize(item, closed) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: (value if key in ("enum", "examples", "default", "const") else _normalize(value, closed))
            for key, value in node.items()}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), bool):
            if node.pop(bound) and limit in node:
                node[bound] = node.pop(limit)
    if closed and isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if node.pop("nullable", False) is True:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def rename_refs(node: Any, rename: dict[str, str], target: str) -> Any:
    """A copy of `node` whose component `$ref`s point to `target + rename[name]`."""
    if isinstance(node, list):
        return [rename_refs(item, rename, target) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: rename_refs(value, rename, target) for key, value in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        name = ref.removeprefix(_REF_PREFIX)
        out["$ref"] = target + rename.get(name, name)
    return out


def input_json_schema(doc: EndpointDocument) -> dict[str, Any]:
    """The input schema on its own (GET /v1/models, the playground): the types it uses under `$defs`."""
    names = {name: name for name in doc.components}
    schema = rename_refs(doc.input_schema, names, "#/$defs/")
    defs = {name: rename_refs(s, names, "#/$defs/") for name, s in doc.components.items() if name != doc.input_name}
    if defs:
        schema["$defs"] = defs
    return schema


def docs_components(doc: EndpointDocument, prefix: str) -> dict[str, Any]:
    """The document's components for /docs, each name prefixed so two endpoints' `Input`s cannot collide."""
    names = {name: prefix + name for name in doc.components}
    return {names[name]: rename_refs(s, names, _REF_PREFIX) for name, s in doc.components.items()}
