"""`POST /v1/storage/upload`: an image to fal storage for curl and mobile clients, with the server key.

Browser and Node callers use `fal.storage.upload` through the proxy route instead; this is the one-request
form for clients without fal's client library:

    curl -F file=@photo.jpg http://127.0.0.1:8000/v1/storage/upload
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.fal.storage import ACCEPTED_TYPES, FILE_FIELD, UploadedImage, spool_image, store_on_fal
from app.gateway import CallerDep, GatewayDep

router = APIRouter(prefix="/v1/storage", tags=["storage"])

# The body is parsed by hand (streamed to disk), so FastAPI cannot derive its schema: describe it here.
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The image: " + ", ".join(ACCEPTED_TYPES) + " (type read from its bytes)",
                        }
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed or interrupted multipart body"},
    401: {"description": "Missing or invalid caller credentials"},
    413: {"description": "The image is larger than FALGATE_MAX_IMAGE_BYTES"},
    415: {"description": "Not multipart/form-data, or the file is not a PNG, JPEG, WebP or GIF image"},
    422: {"description": f"No {FILE_FIELD!r} field, or an empty file"},
    429: {"description": "Over the caller's submit rate limit"},
    502: {"description": "fal storage refused or could not be reached"},
    504: {"description": "fal storage did not answer in time"},
}


@router.post(
    "/upload",
    summary="Upload an image to fal storage",
    description=(
        f"Send one image as multipart/form-data in the field `{FILE_FIELD}`. Its type is read from its bytes "
        "(the declared content type and file name are not trusted). Answers the public `file_url` to pass "
        "as a model's `image_url`."
    ),
    responses=_ERRORS,
    openapi_extra=_REQUEST_BODY,
)
async def upload(request: Request, response: Response, caller: CallerDep, gateway: GatewayDep) -> UploadedImage:
    # Uploads spend storage on the server's fal account: counted with submits, before the body is read.
    verdict = await gateway.limiter.hit(caller.id, "submit")
    response.headers.update(verdict.headers())
    async with spool_image(request, gateway.settings.max_image_bytes) as image:
        return await store_on_fal(gateway.upstream, image)
