"""The mirrored fal queue API: the gateway's base URL behaves like https://queue.fal.run.

`match` finds the operation of a request in the route table (app/doors/table.py) with one dict lookup or
one regex; app/doors/route.py serves what it finds. Each seeded model still appears in /docs with its own
input schema; the body is read raw and forwarded byte for byte after validation (fal applies its own
defaults). Paths that match nothing end in `router`'s catch-all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request, Response

from app.catalog.registry import APP_IDS, MODELS
from app.catalog.spec import ModelSpec
from app.doors.table import PER_REQUEST_ROUTES, SUBMIT_METHOD, DoorMatch, per_request_route, tail_pattern
from app.errors import NotFound
from app.pipeline.operations import (
    FrontDoor,
    Operation,
    OpKind,
    dry_run_param,
    per_request_operation,
    spending_operation,
    supported_models_error,
)

TAG = "queue (fal mirror)"

_PER_REQUEST_PATH = re.compile(rf"^/(?P<app>.+)/requests/(?P<request_id>[^/]+)(?P<tail>{tail_pattern()})?$")


def _submit_operation(request: Request, query: Mapping[str, str], found: tuple) -> Operation:
    (model_id,) = found
    # `dry_run`, not `fal_dry_run`: the fal_ prefix is fal's own query namespace (fal_webhook,
    # fal_max_queue_length), and this parameter never reaches fal; it sits beside our other own ones (push).
    dry_run = dry_run_param(query.get("dry_run"))
    return spending_operation(OpKind.SUBMIT, FrontDoor.REST, model_id, query.get("fal_webhook"), dry_run=dry_run)


def _per_request_operation(request: Request, query: Mapping[str, str], found: tuple) -> Operation:
    route, app_path, request_id = found
    return per_request_operation(route.kind, FrontDoor.REST, app_path, request_id, query.get("logs"))


_SUBMITS: dict[str, DoorMatch] = {}


def _submit_match(path: str) -> DoorMatch | None:
    """A registered model's submit path; configured models register before serving, so build lazily."""
    found = _SUBMITS.get(path)
    if found is None and path[1:] in MODELS:
        found = _SUBMITS[path] = (path, _submit_operation, (path[1:],))
    return found


def match(method: str, path: str) -> DoorMatch | None:
    """The route template, operation factory and path values of a queue request, or None for the routers."""
    if method == SUBMIT_METHOD:
        return _submit_match(path)
    found = _PER_REQUEST_PATH.match(path)
    if found is None:
        return None
    tail = found["tail"]
    route = per_request_route(method, tuple(tail[1:].split("/")) if tail else ())
    app_path = found["app"]
    # An unknown app is not a front-door request: the catch-all answers it (404), or another route does.
    if route is None or not (app_path in APP_IDS or app_path in MODELS):
        return None
    return route.template, _per_request_operation, (route, app_path, found["request_id"])


router = APIRouter(tags=[TAG])


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def unknown_path(path: str, request: Request) -> Response:
    if request.method == SUBMIT_METHOD:
        raise supported_models_error(path)
    raise NotFound("Not Found")


def openapi_paths() -> dict[str, dict[str, Any]]:
    """/docs entries for the mirrored paths: a submit per model with its own schema, and each per-request path."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in MODELS.values():
        body = {"$ref": f"#/components/schemas/{schema_name(spec)}"}
        paths[f"/{spec.model_id}"] = {
            "post": {
                "tags": [TAG],
                "summary": f"Submit to {spec.title}",
                "operationId": f"submit_{spec.slug.replace('-', '_').replace('.', '_').replace('/', '_')}",
                "parameters": [
                    _query("fal_webhook", "Your own webhook URL; the gateway delivers the verified result there."),
                    _query("dry_run", "1 to validate and quote the body (as POST /v1/quote) without sending it"),
                ],
                "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                "responses": _responses("fal's queue answer: request_id and the URLs to poll"),
            }
        }
    for route in PER_REQUEST_ROUTES:
        parameters = [_path_param("app_path", "The app id (owner/app) or the full model id"), _path_param("request_id", "")]
        if route.kind in (OpKind.STATUS, OpKind.STREAM):
            parameters.append(_query("logs", "1 to include the job's logs"))
        paths.setdefault(route.template.replace(":path", ""), {})[route.method.lower()] = {
            "tags": [TAG],
            "summary": route.summary,
            "operationId": f"{route.kind.value}_request",
            "parameters": parameters,
            "responses": _responses("fal's answer, relayed"),
        }
    return paths


def schema_name(spec: ModelSpec) -> str:
    """The /docs component name of a model's input: the pydantic class, or the slugged document schema."""
    if spec.input_model is not None:
        return spec.input_model.__name__
    return docs_prefix(spec) + spec.schema.name


def docs_prefix(spec: ModelSpec) -> str:
    return spec.slug.replace("/", "_").replace(".", "_").replace("-", "_") + "__"


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": description}


def _responses(ok: str) -> dict[str, Any]:
    return {"200": {"description": ok}, "4XX": {"description": "Refused, with a JSON `detail`"}}
