"""The mirrored fal queue API: the gateway's base URL behaves like https://queue.fal.run.

Each seeded model gets its own submit route so /docs shows that model's input schema; the body is still
read raw and forwarded byte for byte after validation (fal applies its own defaults).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request, Response

from app.catalog.models import CATALOG
from app.catalog.spec import ModelSpec
from app.errors import NotFound
from app.gateway import GatewayDep
from app.pipeline.handler import handle
from app.pipeline.operations import FrontDoor, OpKind, per_request_operation, spending_operation, supported_models_error

router = APIRouter(tags=["queue (fal mirror)"])

# The per-request paths, also app/doors/fast_path.py's metric labels for the requests it serves.
STREAM_PATH = "/{app_path:path}/requests/{request_id}/status/stream"
STATUS_PATH = "/{app_path:path}/requests/{request_id}/status"
CANCEL_PATH = "/{app_path:path}/requests/{request_id}/cancel"
RESULT_PATH = "/{app_path:path}/requests/{request_id}"


def _submit_route(spec: ModelSpec) -> Callable[..., Awaitable[Response]]:
    async def submit(request: Request, gateway: GatewayDep, fal_webhook: str | None = None) -> Response:
        op = spending_operation(OpKind.SUBMIT, FrontDoor.REST, spec.model_id, fal_webhook)
        return await handle(gateway, op, request)

    submit.__name__ = f"submit_{spec.slug.replace('-', '_').replace('.', '_')}"
    return submit


for _spec in CATALOG.values():
    router.add_api_route(
        f"/{_spec.model_id}",
        _submit_route(_spec),
        methods=["POST"],
        summary=f"Submit to {_spec.title}",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{_spec.input_model.__name__}"}}},
            }
        },
    )


@router.get(STREAM_PATH, summary="Stream a request's status (SSE)")
async def status_stream(app_path: str, request_id: str, request: Request, gateway: GatewayDep, logs: str | None = None) -> Response:
    op = per_request_operation(OpKind.STREAM, FrontDoor.REST, app_path, request_id, logs)
    return await handle(gateway, op, request)


@router.get(STATUS_PATH, summary="A request's status")
async def status(app_path: str, request_id: str, request: Request, gateway: GatewayDep, logs: str | None = None) -> Response:
    op = per_request_operation(OpKind.STATUS, FrontDoor.REST, app_path, request_id, logs)
    return await handle(gateway, op, request)


@router.put(CANCEL_PATH, summary="Cancel a request")
async def cancel(app_path: str, request_id: str, request: Request, gateway: GatewayDep) -> Response:
    op = per_request_operation(OpKind.CANCEL, FrontDoor.REST, app_path, request_id, None)
    return await handle(gateway, op, request)


@router.get(RESULT_PATH, summary="A request's result")
async def result(app_path: str, request_id: str, request: Request, gateway: GatewayDep) -> Response:
    op = per_request_operation(OpKind.RESULT, FrontDoor.REST, app_path, request_id, None)
    return await handle(gateway, op, request)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def unknown_path(path: str, request: Request) -> Response:
    if request.method == "POST":
        raise supported_models_error(path)
    raise NotFound("Not Found")
