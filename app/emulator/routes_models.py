"""fal's model API, emulated: `GET /api/v1/models` (filters, `expand=openapi-3.0`, pagination) and
`GET /api/v1/models/pricing`, both behind the key check like the other hosts.

The "/api" prefix stands for https://api.fal.ai (FALGATE_FAL_API_URL={emulator}/api). Documents come from
the emulator's own folder (app/emulator/schemas) and FALGATE_EMULATOR_SCHEMA_DIR, in fal's format; an
optional `pricing.json` there ({endpoint_id: {"unit_price", "unit"}}) sets prices.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from .model_catalog import catalog as _catalog
from .web import runtime_of

DEFAULT_PRICE = {"unit_price": 0.1, "unit": "video"}
PAGE_LIMIT = 10

router = APIRouter(prefix="/api/v1/models")


def _entry(endpoint_id: str, document: dict[str, Any], expand: bool) -> dict[str, Any]:
    meta = document["info"].get("x-fal-metadata") or {}
    entry: dict[str, Any] = {
        "endpoint_id": endpoint_id,
        "metadata": {
            "display_name": meta.get("display_name") or endpoint_id.rsplit("/", 1)[0],
            "category": meta.get("category", "image-to-video"),
            "status": meta.get("status", "active"),
            "description": document["info"].get("description", ""),
            "tags": [],
            "thumbnail_url": meta.get("thumbnailUrl"),
        },
    }
    if expand:
        entry["openapi"] = document
    return entry


def _page(items: list[Any], cursor: str | None, limit: int) -> tuple[list[Any], str | None]:
    start = int(cursor) if cursor and cursor.isdigit() else 0
    end = start + limit
    return items[start:end], (str(end) if end < len(items) else None)


@router.get("")
async def list_models(
    request: Request,
    endpoint_id: list[str] = Query(default_factory=list),
    expand: list[str] = Query(default_factory=list),
    category: str | None = None,
    status: str | None = None,
    q: str | None = None,
    limit: int = Query(PAGE_LIMIT, ge=1, le=100),
    cursor: str | None = None,
) -> dict[str, Any]:
    documents, _ = _catalog(runtime_of(request).config.schema_dir)
    ids = [i for i in endpoint_id if i in documents] if endpoint_id else sorted(documents)
    entries = [_entry(i, documents[i], "openapi-3.0" in expand) for i in ids]
    entries = [
        e for e in entries
        if (category is None or e["metadata"]["category"] == category)
        and (status is None or e["metadata"]["status"] == status)
        and (q is None or q.lower() in e["endpoint_id"].lower())
    ]
    page, next_cursor = _page(entries, cursor, limit)
    return {"models": page, "next_cursor": next_cursor, "has_more": next_cursor is not None}


@router.get("/pricing")
async def pricing(
    request: Request,
    endpoint_id: list[str] = Query(default_factory=list),
    limit: int = Query(PAGE_LIMIT, ge=1, le=100),
    cursor: str | None = None,
) -> dict[str, Any]:
    documents, prices = _catalog(runtime_of(request).config.schema_dir)
    ids = [i for i in endpoint_id if i in documents] if endpoint_id else sorted(documents)
    rows = [{"endpoint_id": i, "currency": "USD", **(prices.get(i) or DEFAULT_PRICE)} for i in ids]
    page, next_cursor = _page(rows, cursor, limit)
    return {"prices": page, "next_cursor": next_cursor, "has_more": next_cursor is not None}
