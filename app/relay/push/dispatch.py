"""Push deliveries: queued per device on completion, and each outbox attempt sent by the right sender.

A push delivery is an outbox `Delivery` whose url is `push:<device_id>` and whose body is the stored
notification (title, body, data), so it is leased, retried, listed and redelivered like a client
webhook. Its id is derived from the request and the device, so queueing it again (a second completion
report, another replica) is a no-op: exactly one notification per device and completion.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from app.errors import InvalidInput
from app.ops.logs import register_secret
from app.relay.push.result import PushResult
from app.relay.push.templates import notification
from app.settings import Settings
from app.store import Completion, Delivery, DeliveryState, Device, DevicePlatform, RequestRecord, Store

log = logging.getLogger("falgate.push")

PUSH_SCHEME = "push:"
# A submit's choice, as stored: every device, none, or one ("device:<id>").
CHOICE_ALL, CHOICE_OFF, CHOICE_DEVICE = "all", "off", "device:"
_TRUE, _FALSE = frozenset({"1", "true", "on", "yes"}), frozenset({"0", "false", "off", "no"})
_NAMESPACE = uuid.UUID("3b0c6f53-2f5e-4d1a-9a0e-7c2f1d9b8e44")


class Sender(Protocol):
    async def send(self, token: str, note: dict[str, Any]) -> PushResult: ...

    async def aclose(self) -> None: ...


def is_push(delivery: Delivery) -> bool:
    return delivery.url.startswith(PUSH_SCHEME)


def push_delivery_id(request_id: str, device_id: str) -> str:
    return uuid.uuid5(_NAMESPACE, f"{request_id}:{device_id}").hex


class Push:
    """The configured senders, queueing on completion and sending on each outbox attempt."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        senders: dict[DevicePlatform, Sender],
        *,
        vapid_public_key: str | None = None,
    ) -> None:
        self.vapid_public_key = vapid_public_key  # what browsers subscribe with (GET /v1/push/vapid-public-key)
        self._store = store
        self._settings = settings
        self._senders = senders
        self._wake: Callable[[], None] = lambda: None

    def platforms(self) -> frozenset[DevicePlatform]:
        return frozenset(self._senders)

    def on_queued(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def choice_for(self, caller_id: str, query: Mapping[str, str]) -> str | None:
        """A submit's `?push=0|1` / `?push_device=ID`, checked; None when it names neither."""
        device_id, flag = query.get("push_device"), query.get("push")
        if device_id is not None:
            device = await self._store.get_device(device_id) if device_id else None
            if device is None or device.caller_id != caller_id:  # someone else's device is unknown, too
                raise InvalidInput([{"loc": ["query", "push_device"], "msg": "Unknown device", "type": "device"}])
            return CHOICE_DEVICE + device_id
        if flag is None:
            return None
        if flag.lower() in _TRUE:
            return CHOICE_ALL
        if flag.lower() in _FALSE:
            return CHOICE_OFF
        raise InvalidInput([{"loc": ["query", "push"], "msg": "push must be 0 or 1", "type": "bool_parsing"}])

    async def queue(self, completion: Completion, record: RequestRecord) -> None:
        """One delivery per device of the request's caller (idempotent, so safe on every apply)."""
        if not self._senders:
            return
        devices = [d for d in await self._store.list_devices(record.caller_id) if d.platform in self._senders]
        if not devices:
            return
        choice = await self._store.get_push_choice(completion.request_id)
        if choice is None:
            choice = CHOICE_ALL if self._settings.push_default else CHOICE_OFF
        if choice == CHOICE_OFF:
            return
        if choice.startswith(CHOICE_DEVICE):
            devices = [d for d in devices if d.device_id == choice[len(CHOICE_DEVICE) :]]
        note = notification(completion, record, title=self._settings.push_title, body=self._settings.push_body)
        body = json.dumps(note, separators=(",", ":")).encode()
        now = time.time()
        queued = False
        for device in devices:
            delivery = Delivery(
                delivery_id=push_delivery_id(completion.request_id, device.device_id),
                request_id=completion.request_id,
                caller_id=record.caller_id,
                url=PUSH_SCHEME + device.device_id,
                body=body,
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
            queued = await self._store.enqueue_delivery(delivery) or queued
        if queued:
            self._wake()

    async def attempt(self, delivery: Delivery) -> PushResult:
        """Send one attempt of a push delivery; a token the service reports dead removes its device."""
        device = await self._store.get_device(delivery.url[len(PUSH_SCHEME) :])
        if device is None or device.caller_id != delivery.caller_id:
            return PushResult(False, None, "device_removed", permanent=True)
        sender = self._senders.get(device.platform)
        if sender is None:
            return PushResult(False, None, f"not_configured: {device.platform}", permanent=True)
        try:
            result = await sender.send(device.token, json.loads(delivery.body))
        except Exception as exc:  # a sender's bug must not hold the delivery's lease until it lapses
            # Only the type: an exception's text may quote a token or a key.
            log.error("push sender failed", extra={"fields": {"device_id": device.device_id, "error": type(exc).__name__}})
            result = PushResult(False, None, f"send_failed: {type(exc).__name__}")
        if result.dead:
            await self._forget(device)
        return result

    async def _forget(self, device: Device) -> None:
        await self._store.delete_device(device.caller_id, device.device_id)
        log.info(
            "push token reported dead: device removed",
            extra={"fields": {"device_id": device.device_id, "platform": str(device.platform)}},
        )

    async def aclose(self) -> None:
        for sender in self._senders.values():
            await sender.aclose()


def open_push(store: Store, settings: Settings) -> Push:
    """The senders FALGATE_* configures; a platform left unconfigured takes no devices."""
    senders: dict[DevicePlatform, Sender] = {}
    vapid_public_key = None
    if settings.fcm_credentials:
        from app.relay.push.fcm import FcmSender

        senders[DevicePlatform.FCM] = FcmSender(settings.fcm_credentials, settings.fcm_url, settings.push_ca_file)
    apns = (settings.apns_key_file, settings.apns_key_id, settings.apns_team_id, settings.apns_topic)
    if all(apns):
        from app.relay.push.apns import ApnsSender

        key_file, key_id, team_id, topic = apns
        senders[DevicePlatform.APNS] = ApnsSender(
            key_file, key_id, team_id, topic, settings.apns_url, settings.push_ca_file  # type: ignore[arg-type]
        )
    if settings.vapid_private_key is not None and settings.vapid_subject:
        from app.relay.push.vapid import load_private_key, public_key_b64
        from app.relay.push.webpush import WebPushSender

        register_secret(settings.vapid_private_key.get_secret_value())
        key = load_private_key(settings.vapid_private_key.get_secret_value())
        vapid_public_key = public_key_b64(key)
        senders[DevicePlatform.WEBPUSH] = WebPushSender(
            key, settings.vapid_subject, allow_private=settings.webhook_allow_private
        )
    return Push(store, settings, senders, vapid_public_key=vapid_public_key)
