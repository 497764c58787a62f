"""A client of fal's model API (`GET /v1/models?expand=openapi-3.0`, `GET /v1/models/pricing`).

Synchronous on purpose: it runs once, before the gateway serves (startup and `falgate models sync`),
and a failure there must stop the start, not leave a half-loaded registry behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

IDS_PER_CALL = 50  # fal accepts up to 50 endpoint_id filters per call
_MAX_PAGES = 100  # a server that always says has_more cannot keep us here forever


class ModelApiError(RuntimeError):
    """The model API could not be read; the message names the URL path and the status, never the key."""


def _pages(client: httpx.Client, path: str, params: list[tuple[str, str]], items: str) -> Iterator[dict[str, Any]]:
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        query = params + ([("cursor", cursor)] if cursor else [])
        try:
            response = client.get(path, params=query)
        except httpx.HTTPError as exc:
            raise ModelApiError(f"GET {path}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise ModelApiError(f"GET {path}: HTTP {response.status_code}")
        try:
            page = response.json()
        except ValueError:
            raise ModelApiError(f"GET {path}: the answer is not JSON") from None
        for entry in page.get(items) or ():
            if isinstance(entry, dict):
                yield entry
        cursor = page.get("next_cursor")
        if not page.get("has_more") or not cursor:
            return


def _client(api_url: str, key: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=api_url, headers={"authorization": f"Key {key}"}, timeout=timeout)


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), IDS_PER_CALL):
        yield ids[start : start + IDS_PER_CALL]


def fetch_models(
    api_url: str, key: str, ids: list[str], timeout: float = 15.0, page_size: int = IDS_PER_CALL
) -> dict[str, dict[str, Any]]:
    """{endpoint_id: model entry} for the ids fal knows (`metadata`, and `openapi` when it has a document)."""
    found: dict[str, dict[str, Any]] = {}
    with _client(api_url, key, timeout) as client:
        for chunk in _chunks(ids):
            params = [("endpoint_id", endpoint_id) for endpoint_id in chunk]
            params += [("expand", "openapi-3.0"), ("limit", str(page_size))]
            for entry in _pages(client, "/v1/models", params, "models"):
                endpoint_id = entry.get("endpoint_id")
                if isinstance(endpoint_id, str):
                    found[endpoint_id] = entry
    return found


def fetch_prices(api_url: str, key: str, ids: list[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """{endpoint_id: {"unit_price": USD, "unit": "second"|"video"|...}} from fal's price list."""
    found: dict[str, dict[str, Any]] = {}
    with _client(api_url, key, timeout) as client:
        for chunk in _chunks(ids):
            params = [("endpoint_id", endpoint_id) for endpoint_id in chunk]
            for entry in _pages(client, "/v1/models/pricing", params, "prices"):
                endpoint_id, price = entry.get("endpoint_id"), entry.get("unit_price")
                if isinstance(endpoint_id, str) and isinstance(price, int | float) and not isinstance(price, bool):
                    found[endpoint_id] = {"unit_price": float(price), "unit": str(entry.get("unit") or "request")}
    return found
