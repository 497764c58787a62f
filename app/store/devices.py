"""The store's contract for push devices: a caller's push targets and each submit's push choice.

Implemented beside the rest of each backend, in app/store/sqlite_devices.py and app/store/redis_devices.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum


class DevicePlatform(StrEnum):
    FCM = "fcm"
    APNS = "apns"
    WEBPUSH = "webpush"


@dataclass(frozen=True, slots=True)
class Device:
    """A caller's push target. `token` is the FCM registration token, the APNs device token, or the
    Web Push subscription as JSON; it is a credential of the caller's user and never leaves the store
    but towards its push service."""

    device_id: str
    caller_id: str
    platform: DevicePlatform
    token: str
    label: str
    created_at: float


class DeviceStore(ABC):
    @abstractmethod
    async def add_device(self, device: Device, cap: int) -> tuple[Device | None, bool]:
        """Registers a caller's push target, atomically across replicas.

        A device_id already registered comes back with False, its token replaced by the new one (device
        ids are derived from the caller, platform and token, or a Web Push subscription's endpoint whose
        keys a browser may rotate, so a token registered twice is one device); a new one is stored and
        comes back with True, unless the caller already has `cap` devices: then (None, False).
        """

    @abstractmethod
    async def list_devices(self, caller_id: str) -> list[Device]:
        """The caller's devices, oldest first."""

    @abstractmethod
    async def get_device(self, device_id: str) -> Device | None: ...

    @abstractmethod
    async def delete_device(self, caller_id: str, device_id: str) -> bool:
        """True only if the caller owned the device and this call removed it."""

    @abstractmethod
    async def set_push_choice(self, request_id: str, choice: str) -> None:
        """What a submit asked of push (`?push=0`, `?push_device=ID`): kept as long as its request."""

    @abstractmethod
    async def get_push_choice(self, request_id: str) -> str | None:
        """The choice stored for the request, None when its submit made none (the default applies)."""
