"""The emulator's fal OpenAPI documents: its own folder (app/emulator/schemas, the nine) and
FALGATE_EMULATOR_SCHEMA_DIR, read once. The model API serves them; jobs read an endpoint's category to
answer with a video or an image."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

BUILT_IN = Path(__file__).resolve().parent / "schemas"


@cache
def catalog(extra: str | None) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(documents by endpoint id, prices by endpoint id from any `pricing.json`)."""
    documents: dict[str, dict[str, Any]] = {}
    prices: dict[str, dict[str, Any]] = {}
    for folder in (BUILT_IN, Path(extra) if extra else None):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if path.name == "pricing.json" and isinstance(data, dict):
                prices.update(data)
                continue
            endpoint_id = ((data.get("info") or {}).get("x-fal-metadata") or {}).get("endpointId")
            if isinstance(endpoint_id, str):
                documents[endpoint_id] = data
    return documents, prices


def category_of(model_id: str, extra: str | None) -> str:
    """The endpoint's category ("image-to-video", "text-to-image", ...); unknown endpoints count as video."""
    document = catalog(extra)[0].get(model_id)
    meta = ((document or {}).get("info") or {}).get("x-fal-metadata") or {}
    return str(meta.get("category") or "image-to-video")


def makes_image(category: str) -> bool:
    return category.rsplit("-to-", 1)[-1] == "image"
