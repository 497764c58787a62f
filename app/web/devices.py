"""A caller's push devices (`/v1/devices`) and the VAPID key browsers subscribe with.

Devices belong to the caller that registered them: another caller's device is "not found", whether
listed, deleted or targeted. A token is a credential of the caller's user: it is stored, sent to its
push service and never answered back.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.errors import BadRequest, NotFound, TooManyRequests
from app.gateway import GatewayDep, ReadCallerDep
from app.relay.client_webhooks import TargetRefused, validate_target_url
from app.relay.push.vapid import b64url_decode
from app.store import Device, DevicePlatform

router = APIRouter(prefix="/v1", tags=["push"])

_Token = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[\x21-\x7e]+$")]


class _Keys(BaseModel):
    model_config = ConfigDict(extra="ignore")
    p256dh: Annotated[str, Field(min_length=1, max_length=200)]
    auth: Annotated[str, Field(min_length=1, max_length=100)]

    @field_validator("p256dh")
    @classmethod
    def _point(cls, value: str) -> str:
        raw = _decoded(value)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError("keys.p256dh must be base64url of an uncompressed P-256 point (65 bytes)")
        return value

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str) -> str:
        if len(_decoded(value)) != 16:
            raise ValueError("keys.auth must be base64url of 16 bytes")
        return value


class _Subscription(BaseModel):
    model_config = ConfigDict(extra="ignore")  # a PushSubscription's JSON also has expirationTime
    endpoint: Annotated[str, Field(min_length=1, max_length=2048)]
    keys: _Keys


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: Literal["fcm", "apns", "webpush"]
    token: _Token | None = None
    subscription: _Subscription | None = None
    label: Annotated[str, Field(max_length=100)] = ""


def _decoded(value: str) -> bytes:
    try:
        return b64url_decode(value)
    except (ValueError, TypeError):
        raise ValueError("not base64url") from None


def _view(device: Device) -> dict:
    return {
        "id": device.device_id,
        "platform": device.platform,
        "label": device.label,
        "created_at": device.created_at,
    }


def _token(body: DeviceIn, allow_private: bool) -> str:
    if body.platform == DevicePlatform.WEBPUSH:
        if body.subscription is None or body.token is not None:
            raise BadRequest('a webpush device takes "subscription" (the browser\'s PushSubscription), not "token"')
        try:
            validate_target_url(body.subscription.endpoint, allow_private=allow_private)
        except TargetRefused as exc:
            raise BadRequest(f"subscription.endpoint refused: {exc.reason}") from None
        sub = body.subscription
        return json.dumps({"endpoint": sub.endpoint, "keys": {"p256dh": sub.keys.p256dh, "auth": sub.keys.auth}})
    if body.token is None or body.subscription is not None:
        raise BadRequest(f'a {body.platform} device takes "token", not "subscription"')
    return body.token


def _device_id(caller_id: str, platform: str, token: str) -> str:
    # Derived, so a token registered twice is one device; hashed, so the id reveals nothing of the token.
    # A Web Push subscription is one device per endpoint (its keys may be rotated by the browser).
    key = json.loads(token)["endpoint"] if platform == DevicePlatform.WEBPUSH else token
    return hashlib.sha256(f"{caller_id}\n{platform}\n{key}".encode()).hexdigest()[:32]


@router.post("/devices", status_code=201, summary="Register a push target for the caller")
async def add_device(body: DeviceIn, caller: ReadCallerDep, gateway: GatewayDep, response: Response) -> dict:
    platform = DevicePlatform(body.platform)
    if platform not in gateway.push.platforms():
        raise BadRequest(f"push to {platform} is not configured on this gateway")
    token = _token(body, gateway.settings.webhook_allow_private)
    device = Device(_device_id(caller.id, platform, token), caller.id, platform, token, body.label, time.time())
    stored, created = await gateway.store.add_device(device, gateway.settings.max_devices_per_caller)
    if stored is None:
        raise TooManyRequests(f"at most {gateway.settings.max_devices_per_caller} devices per caller")
    if not created:
        response.status_code = 200
    return _view(stored)


@router.get("/devices", summary="The caller's push devices")
async def list_devices(caller: ReadCallerDep, gateway: GatewayDep) -> dict:
    return {"devices": [_view(d) for d in await gateway.store.list_devices(caller.id)]}


@router.delete("/devices/{device_id}", status_code=204, summary="Remove one of the caller's devices")
async def delete_device(device_id: str, caller: ReadCallerDep, gateway: GatewayDep) -> Response:
    if not await gateway.store.delete_device(caller.id, device_id):
        raise NotFound("Device not found")
    return Response(status_code=204)


@router.get("/push/vapid-public-key", summary="The key a browser's PushManager.subscribe needs")
async def vapid_public_key(gateway: GatewayDep) -> dict:
    if gateway.push.vapid_public_key is None:
        raise NotFound("Web Push is not configured (FALGATE_VAPID_PRIVATE_KEY, FALGATE_VAPID_SUBJECT)")
    return {"public_key": gateway.push.vapid_public_key}
