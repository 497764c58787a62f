"""Push devices in the Redis store: a mixin for `RedisStore` (which provides `_redis`, `_key`, `_guard`).

Keys:
    {p}dev:{device_id}      hash   a Device; no expiry (a device stays until deleted or reported dead)
    {p}devs:{caller_id}     zset   device_id by created_at
    {p}pushopt:{request_id} string a submit's push choice, expiring with its request
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from app.store.base import REQUEST_TTL_SECONDS
from app.store.devices import Device, DevicePlatform

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

# KEYS[1] device, KEYS[2] the caller's index; ARGV cap, created_at, token, then field/value pairs.
# Returns {1, hash} when added, {0, hash} when it existed (its token refreshed), {-1} at the cap.
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'token', ARGV[3])
  return {0, redis.call('HGETALL', KEYS[1])}
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return {-1} end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], redis.call('HGET', KEYS[1], 'device_id'))
return {1, redis.call('HGETALL', KEYS[1])}
"""

# KEYS[1] device, KEYS[2] the caller's index; ARGV caller_id. Only the owner deletes.
_DELETE = """
if redis.call('HGET', KEYS[1], 'caller_id') ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'device_id'))
redis.call('DEL', KEYS[1])
return 1
"""


def _from_pairs(flat: list[Any]) -> Device | None:
    if not flat:
        return None
    values = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    return Device(
        values["device_id"],
        values["caller_id"],
        DevicePlatform(values["platform"]),
        values["token"],
        values["label"],
        float(values["created_at"]),
    )


class RedisDevices:
    """Mixed into RedisStore."""

    if TYPE_CHECKING:
        _redis: aioredis.Redis

        def _key(self, kind: str, *parts: str) -> str: ...

        def _guard(self) -> contextlib.AbstractContextManager[None]: ...

    def _register_device_scripts(self) -> None:
        self._add_device: AsyncScript = self._redis.register_script(_ADD)
        self._delete_device: AsyncScript = self._redis.register_script(_DELETE)

    async def add_device(self, device: Device, cap: int) -> tuple[Device | None, bool]:
        fields = {
            "device_id": device.device_id,
            "caller_id": device.caller_id,
            "platform": str(device.platform),
            "token": device.token,
            "label": device.label,
            "created_at": repr(device.created_at),
        }
        args: list[Any] = [cap, repr(device.created_at), device.token]
        for name, value in fields.items():
            args += [name, value]
        keys = [self._key("dev", device.device_id), self._key("devs", device.caller_id)]
        with self._guard():
            reply = await self._add_device(keys=keys, args=args)
        if int(reply[0]) == -1:
            return None, False
        return _from_pairs(reply[1]), int(reply[0]) == 1

    async def list_devices(self, caller_id: str) -> list[Device]:
        with self._guard():
            ids = await self._redis.zrange(self._key("devs", caller_id), 0, -1)
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for raw in ids:
                    pipe.hgetall(self._key("dev", raw.decode()))
                replies = await pipe.execute()
        devices = []
        for reply in replies:
            flat = [item for pair in reply.items() for item in pair]
            device = _from_pairs(flat)
            if device is not None:
                devices.append(device)
        return devices

    async def get_device(self, device_id: str) -> Device | None:
        with self._guard():
            reply = await self._redis.hgetall(self._key("dev", device_id))
        return _from_pairs([item for pair in reply.items() for item in pair])

    async def delete_device(self, caller_id: str, device_id: str) -> bool:
        keys = [self._key("dev", device_id), self._key("devs", caller_id)]
        with self._guard():
            return bool(await self._delete_device(keys=keys, args=[caller_id]))

    async def set_push_choice(self, request_id: str, choice: str) -> None:
        with self._guard():
            await self._redis.set(self._key("pushopt", request_id), choice, ex=REQUEST_TTL_SECONDS)

    async def get_push_choice(self, request_id: str) -> str | None:
        with self._guard():
            raw = await self._redis.get(self._key("pushopt", request_id))
        return None if raw is None else raw.decode()
