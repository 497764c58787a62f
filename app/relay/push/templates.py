"""What a notification says: title and body from FALGATE_PUSH_TITLE/_BODY, and the data apps act on."""

from __future__ import annotations

from typing import Any

from app.store import Completion, RequestRecord


def video_url(payload: dict | None) -> str:
    """The result's video URL (fal's `{"video": {"url": ...}}`), or "" when there is none."""
    if not isinstance(payload, dict):
        return ""
    for key in ("video", "image"):
        media = payload.get(key)
        if isinstance(media, dict) and isinstance(media.get("url"), str):
            return media["url"]
    images = payload.get("images")
    if isinstance(images, list) and images and isinstance(images[0], dict):
        url = images[0].get("url")
        return url if isinstance(url, str) else ""
    return ""


def notification(completion: Completion, record: RequestRecord, *, title: str, body: str) -> dict[str, Any]:
    """The stored notification: {"title", "body", "data"}; data values are strings (FCM requires it)."""
    outcome = "ready" if completion.ok else "failed"
    fields = {"model": record.model_id, "outcome": outcome, "request_id": completion.request_id}
    return {
        "title": title.format(**fields),
        "body": body.format(**fields),
        "data": {
            "request_id": completion.request_id,
            "status": "OK" if completion.ok else "ERROR",
            "model_id": record.model_id,
            "video_url": video_url(completion.payload),
        },
    }
