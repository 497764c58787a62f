"""The typed operation both front doors turn a request into, and the rules for naming apps and requests.

The mirrored REST paths and the `x-fal-target-url` proxy route each parse their own request shape, then
hand the pipeline one `Operation`. Everything after that (caller checks, validation, the upstream call,
bookkeeping) sees only the operation, so the two doors cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from app.catalog.registry import APP_IDS, MODELS
from app.catalog.spec import ModelSpec, app_id_of
from app.errors import BadRequest, NotFound


class OpKind(StrEnum):
    SUBMIT = "submit"
    STATUS = "status"
    STREAM = "stream"
    RESULT = "result"
    CANCEL = "cancel"
    RUN = "run"
    UPLOAD_INITIATE = "upload_initiate"
    TOKEN = "token"


# Operations that read a request fal already holds: safe to retry, owned by whoever submitted it.
READ_KINDS = frozenset({OpKind.STATUS, OpKind.STREAM, OpKind.RESULT})
PER_REQUEST_KINDS = frozenset({OpKind.STATUS, OpKind.STREAM, OpKind.RESULT, OpKind.CANCEL})
SPENDING_KINDS = frozenset({OpKind.SUBMIT, OpKind.RUN})


class FrontDoor(StrEnum):
    REST = "rest"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class Operation:
    kind: OpKind
    door: FrontDoor
    app_id: str = ""
    model: ModelSpec | None = None
    request_id: str | None = None
    # Query parameters the gateway chose to pass on (already filtered), e.g. logs=1 or storage_type.
    params: dict[str, str] = field(default_factory=dict)
    # A submit that only asks what it would cost (`?dry_run=1` on the mirrored path): validated and quoted,
    # never sent, nothing reserved.
    dry_run: bool = False

    @property
    def model_id(self) -> str | None:
        return self.model.model_id if self.model else None


# fal's request ids are UUIDs; a strict alphabet keeps path tricks out of the URL we build upstream.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def supported_models_error(what: str) -> NotFound:
    return NotFound(f"Unknown model {what!r}", supported_models=list(MODELS))


def require_model(model_id: str) -> ModelSpec:
    spec = MODELS.get(model_id)
    if spec is None:
        raise supported_models_error(model_id)
    return spec


def resolve_app_id(path: str) -> str:
    """The owner/app of a per-request path, which fal allows to be the app id or a full model id."""
    app_id = app_id_of(path)
    if app_id not in APP_IDS or (path != app_id and path not in MODELS):
        raise supported_models_error(path)
    return app_id


def check_request_id(request_id: str) -> str:
    if not _REQUEST_ID.match(request_id):
        raise BadRequest("Malformed request id")
    return request_id


def logs_param(raw: str | None) -> dict[str, str]:
    """fal clients send logs=1/0/true/false; pass one canonical form on, or nothing."""
    if raw is None:
        return {}
    return {"logs": "1" if raw.strip().lower() in ("1", "true", "yes") else "0"}


def per_request_operation(kind: OpKind, door: FrontDoor, app_path: str, request_id: str, logs: str | None) -> Operation:
    params = logs_param(logs) if kind in (OpKind.STATUS, OpKind.STREAM) else {}
    return Operation(kind, door, resolve_app_id(app_path), request_id=check_request_id(request_id), params=params)


def spending_operation(
    kind: OpKind, door: FrontDoor, model_id: str, webhook: str | None = None, *, dry_run: bool = False
) -> Operation:
    spec = require_model(model_id)
    params = {"fal_webhook": webhook} if webhook else {}
    return Operation(kind, door, spec.app_id, model=spec, params=params, dry_run=dry_run)


def dry_run_param(raw: str | None) -> bool:
    """`dry_run=1|true|yes` (any case); anything else, or absent, is a real submit."""
    return raw is not None and raw.strip().lower() in ("1", "true", "yes")
