"""The model registry: the nine built-in models plus the endpoints FALGATE_MODELS configures.

Each configured endpoint's input schema comes from fal's own OpenAPI document, looked for in this order:
FALGATE_MODEL_SCHEMA_DIR (pinned documents win), fal's model API (written to FALGATE_MODEL_CACHE_DIR), then
that cache (so a restart with the model API down still starts). Loading happens once, before the gateway
serves; the front doors, the proxy allowlist, /docs and GET /v1/models all read `MODELS` and `APP_IDS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from app.catalog import model_api
from app.catalog.billing import BillingRule
from app.catalog.models import APP_IDS as BUILT_IN_APP_IDS
from app.catalog.models import CATALOG
from app.catalog.price_rules import PER_REQUEST
from app.catalog.schema_documents import DocumentError, EndpointDocument, file_name, parse_document, read_folder
from app.catalog.schema_validation import SchemaInput
from app.catalog.spec import ModelSpec, app_id_of

log = logging.getLogger("falgate")

_MODELS: dict[str, ModelSpec] = dict(CATALOG)
MODELS: Mapping[str, ModelSpec] = MappingProxyType(_MODELS)  # read-only view; `register` changes it
APP_IDS: set[str] = set(BUILT_IN_APP_IDS)
_PRICES_FILE = "_pricing.json"


class ModelLoadError(RuntimeError):
    """A configured endpoint cannot be served (unknown, deprecated, no usable document): start refused."""


@dataclass(frozen=True, slots=True)
class ModelSources:
    ids: tuple[str, ...]
    schema_dir: Path | None
    cache_dir: Path | None
    api_url: str | None  # None: never call the model API (emulator mode: the key is not fal's)
    key: str = field(repr=False)
    strict: bool = True
    rules: Mapping[str, BillingRule] = field(default_factory=dict)
    prices: Mapping[str, float] = field(default_factory=dict)


def register(spec: ModelSpec) -> None:
    _MODELS[spec.model_id] = spec
    APP_IDS.add(spec.app_id)


def configured() -> list[ModelSpec]:
    return [spec for spec in _MODELS.values() if spec.source != "built-in"]


def load(sources: ModelSources) -> list[ModelSpec]:
    """Load and register every configured endpoint, or raise ModelLoadError naming each one that failed."""
    ids = [endpoint_id for endpoint_id in sources.ids if endpoint_id not in CATALOG]
    if not ids:
        return []
    pinned = read_folder(sources.schema_dir) if sources.schema_dir else {}
    live, live_error = _fetch_live(sources, [endpoint_id for endpoint_id in ids if endpoint_id not in pinned])
    cached = read_folder(sources.cache_dir) if sources.cache_dir else {}
    # fal's price list is asked only when the model API is used anyway: pinned documents mean offline.
    prices = _prices(sources, [endpoint_id for endpoint_id in ids if endpoint_id not in pinned])
    specs: list[ModelSpec] = []
    problems: list[str] = []
    for endpoint_id in ids:
        try:
            doc, source = _document(endpoint_id, pinned, live, cached, live_error)
            if doc.deprecated:
                raise DocumentError(f"{endpoint_id}: fal marks this endpoint deprecated")
        except DocumentError as exc:
            problems.append(str(exc))
            continue
        if source == "model-api" and sources.cache_dir is not None:
            _write(sources.cache_dir / file_name(endpoint_id), doc.document)
        specs.append(_spec(doc, source, sources, prices.get(endpoint_id)))
    if problems and sources.strict:
        raise ModelLoadError("cannot serve FALGATE_MODELS:\n" + "\n".join(f"  - {p}" for p in problems))
    for problem in problems:
        log.warning("FALGATE_MODELS: left out (FALGATE_MODELS_STRICT=false): %s", problem)
    for spec in specs:
        register(spec)
    return specs


def sync(sources: ModelSources, folder: Path) -> list[str]:
    """`falgate models sync`: fetch the configured endpoints' documents from the model API into `folder`."""
    ids = [endpoint_id for endpoint_id in sources.ids if endpoint_id not in CATALOG]
    if sources.api_url is None:
        raise ModelLoadError("emulator mode (no FAL_KEY): set FAL_KEY to fetch from fal's model API")
    entries = model_api.fetch_models(sources.api_url, sources.key, ids)
    written: list[str] = []
    for endpoint_id in ids:
        entry = entries.get(endpoint_id)
        if entry is None or not isinstance(entry.get("openapi"), dict):
            raise ModelLoadError(f"{endpoint_id}: fal's model API does not know this endpoint")
        document = _with_metadata(entry["openapi"], entry.get("metadata") or {})
        parse_document(document)  # refuse to pin a document the gateway could not serve
        _write(folder / file_name(endpoint_id), document)
        written.append(endpoint_id)
    return written


def _fetch_live(sources: ModelSources, ids: list[str]) -> tuple[dict[str, Any], str | None]:
    if not ids:
        return {}, None
    if sources.api_url is None:
        return {}, "not called in emulator mode: put the documents in FALGATE_MODEL_SCHEMA_DIR"
    try:
        return model_api.fetch_models(sources.api_url, sources.key, ids), None
    except model_api.ModelApiError as exc:
        log.warning("fal's model API is unreachable (%s): using cached documents", exc)
        return {}, str(exc)


def _document(
    endpoint_id: str, pinned: dict[str, Any], live: dict[str, Any], cached: dict[str, Any], live_error: str | None
) -> tuple[EndpointDocument, str]:
    if endpoint_id in pinned:
        return parse_document(pinned[endpoint_id]), "folder"
    entry = live.get(endpoint_id)
    if entry is not None:
        metadata = entry.get("metadata") or {}
        if metadata.get("status") == "deprecated":
            raise DocumentError(f"{endpoint_id}: fal marks this endpoint deprecated")
        if not isinstance(entry.get("openapi"), dict):
            raise DocumentError(f"{endpoint_id}: fal's model API has no OpenAPI document for it")
        return parse_document(_with_metadata(entry["openapi"], metadata)), "model-api"
    if endpoint_id in cached:
        return parse_document(cached[endpoint_id]), "cache"
    if live_error is not None:
        raise DocumentError(f"{endpoint_id}: not in the schema folder or cache, and the model API failed ({live_error})")
    raise DocumentError(f"{endpoint_id}: unknown endpoint (fal's model API does not list it)")


def _with_metadata(document: dict[str, Any], metadata: dict[str, Any]) -> dict[str, Any]:
    """The document with the model API's status and category folded into info.x-fal-metadata (for the cache)."""
    info = dict(document.get("info") or {})
    meta = dict(info.get("x-fal-metadata") or {})
    for key in ("status", "category", "display_name"):
        if key in metadata:
            meta[key] = metadata[key]
    return {**document, "info": {**info, "x-fal-metadata": meta}}


def _spec(doc: EndpointDocument, source: str, sources: ModelSources, price: dict[str, Any] | None) -> ModelSpec:
    title = (doc.document.get("info") or {}).get("x-fal-metadata", {}).get("display_name") or doc.endpoint_id
    unit_price = sources.prices.get(doc.endpoint_id)
    if unit_price is None and price is not None:
        unit_price = price["unit_price"]
    return ModelSpec(
        doc.endpoint_id,
        app_id_of(doc.endpoint_id),
        doc.endpoint_id,  # the slug: price tables key configured models by endpoint id
        str(title),
        None,
        sources.rules.get(doc.endpoint_id, PER_REQUEST),
        schema=SchemaInput(doc),
        category=doc.category,
        source=source,
        unit_price=unit_price if unit_price is not None else 0.0,
    )


def _prices(sources: ModelSources, ids: list[str]) -> dict[str, dict[str, Any]]:
    """fal's price list for ids FALGATE_PRICES does not name; cached beside the documents."""
    wanted = [endpoint_id for endpoint_id in ids if endpoint_id not in sources.prices]
    cache = sources.cache_dir / _PRICES_FILE if sources.cache_dir else None
    cached: dict[str, dict[str, Any]] = {}
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cached = {}
    if not wanted or sources.api_url is None:
        return cached
    try:
        fetched = model_api.fetch_prices(sources.api_url, sources.key, wanted)
    except model_api.ModelApiError as exc:
        log.warning("fal's price list is unreachable (%s): using cached prices", exc)
        return cached
    merged = {**cached, **fetched}
    if cache is not None and fetched:
        _write(cache, merged)
    return merged


def _write(path: Path, document: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=2, sort_keys=False), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc.strerror)
