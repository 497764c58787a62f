"""The push-device part of the store contract, on SQLite and on the real Redis."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from app.store import Device, DevicePlatform, Store
from tests.store_backends import Backend

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _device(device_id: str, caller_id: str = "alice", token: str = "tok", created_at: float | None = None) -> Device:
    return Device(device_id, caller_id, DevicePlatform.FCM, token, "Pixel", created_at or time.time())


async def test_a_device_is_added_once_listed_oldest_first_and_deleted_by_its_owner_only(store: Store) -> None:
    first = _device("d1", created_at=100.0)
    assert await store.add_device(first, cap=10) == (first, True)
    again = _device("d1", token="tok", created_at=200.0)
    assert await store.add_device(again, cap=10) == (first, False), "the first registration stays"
    rotated = await store.add_device(_device("d1", token="new keys", created_at=300.0), cap=10)
    assert rotated == (replace(first, token="new keys"), False), "same device, its token refreshed"
    first = rotated[0]
    second = Device("d2", "alice", DevicePlatform.WEBPUSH, '{"endpoint":"https://p/1"}', "", 150.0)
    assert (await store.add_device(second, cap=10))[1]
    assert [d.device_id for d in await store.list_devices("alice")] == ["d1", "d2"]
    assert await store.get_device("d2") == second
    assert await store.list_devices("bob") == []
    assert not await store.delete_device("bob", "d1"), "only the owner deletes"
    assert await store.delete_device("alice", "d1")
    assert not await store.delete_device("alice", "d1")
    assert await store.get_device("d1") is None
    assert [d.device_id for d in await store.list_devices("alice")] == ["d2"]


async def test_the_cap_holds_under_concurrent_registrations(backend: Backend) -> None:
    stores = [backend.open() for _ in range(3)]
    for opened in stores:  # opened one after another (as replicas start): the race under test is the cap's
        await opened.ping()
    results = await asyncio.gather(*(stores[i % 3].add_device(_device(f"d{i}", token=f"t{i}"), cap=4) for i in range(12)))
    assert sum(1 for device, created in results if created) == 4
    assert all(device is None for device, created in results if not created)
    assert len(await stores[0].list_devices("alice")) == 4
    # Another caller has a cap of its own; a known device is answered even at the cap.
    assert (await stores[1].add_device(_device("b1", caller_id="bob"), cap=4))[1]
    known = next(device for device, created in results if created)
    assert await stores[2].add_device(known, cap=4) == (known, False)


async def test_a_push_choice_is_kept_per_request(store: Store) -> None:
    assert await store.get_push_choice("r1") is None
    await store.set_push_choice("r1", "off")
    await store.set_push_choice("r2", "device:d1")
    assert await store.get_push_choice("r1") == "off"
    assert await store.get_push_choice("r2") == "device:d1"
