"""fal's REST host (under /rest) and the CDN that serves uploads and the sample video (under /files)."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from .runtime import SAMPLE_IMAGE, SAMPLE_VIDEO
from .storage import UploadRejected
from .web import public_base, read_json_object, runtime_of

router = APIRouter(include_in_schema=False)

TOKEN_SECONDS = 300


@router.post("/rest/storage/upload/initiate")
async def upload_initiate(request: Request) -> Response:
    body = await read_json_object(request)
    if isinstance(body, Response):
        return body
    content_type = str(body.get("content_type") or "application/octet-stream")
    file_id, name, token = runtime_of(request).files.initiate(str(body.get("file_name") or ""), content_type)
    base = public_base(request)
    return JSONResponse(
        {"upload_url": f"{base}/files/upload/{token}", "file_url": f"{base}/files/{file_id}/{quote(name)}"}
    )


@router.api_route("/rest/tokens", methods=["POST"])
@router.api_route("/rest/tokens/", methods=["POST"])
async def mint_token(request: Request) -> Response:
    body = await read_json_object(request)
    if isinstance(body, Response):
        return body
    expires = datetime.fromtimestamp(time.time() + TOKEN_SECONDS, timezone.utc)
    return JSONResponse(
        {
            "token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "allowed_apps": body.get("allowed_apps"),
            "expires_at": expires.isoformat().replace("+00:00", "Z"),
        }
    )


@router.get("/rest/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, Any]:
    return runtime_of(request).signer.jwks()


@router.put("/files/upload/{token}")
async def upload_put(token: str, request: Request) -> Response:
    """No key here: the signed, single-use URL is the authorization, as with fal's CDN."""
    runtime = runtime_of(request)
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > runtime.config.max_upload_bytes:
            return JSONResponse({"detail": "File too large"}, status_code=413)
    try:
        stored = runtime.files.complete(token, bytes(data), request.headers.get("content-type"))
    except UploadRejected as exc:
        return JSONResponse({"detail": f"Forbidden: {exc}"}, status_code=403)
    return JSONResponse({"file_id": stored.file_id, "file_size": len(stored.data)})


# Range requests (so a <video> can seek) come from FileResponse.
@router.api_route("/files/sample.png", methods=["GET", "HEAD"])
async def sample_image() -> Response:
    return FileResponse(SAMPLE_IMAGE, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


@router.api_route("/files/sample.mp4", methods=["GET", "HEAD"])
async def sample_video() -> Response:
    return FileResponse(SAMPLE_VIDEO, media_type="video/mp4", headers={"Cache-Control": "public, max-age=3600"})


@router.api_route("/files/{file_id}/{file_name}", methods=["GET", "HEAD"])
async def download(file_id: str, file_name: str, request: Request) -> Response:
    stored = runtime_of(request).files.get(file_id, file_name)
    if stored is None:
        return JSONResponse({"detail": "File not found"}, status_code=404)
    body = b"" if request.method == "HEAD" else stored.data
    headers = {"content-length": str(len(stored.data))}
    return Response(body, media_type=stored.content_type, headers=headers)
