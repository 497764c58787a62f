"""Push devices in the SQLite store: a mixin for `SQLiteStore` (which provides `_write` and `_read`).

Its table comes from DEVICES_MIGRATION below, appended to MIGRATIONS in app/store/sqlite_schema.py.
Devices never expire: a device stays until its caller deletes it or its push service reports it dead.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from app.store.base import REQUEST_TTL_SECONDS
from app.store.devices import Device, DevicePlatform

T = TypeVar("T")

DEVICES_MIGRATION: tuple[str, ...] = (
    (
        "CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, caller_id TEXT NOT NULL,"
        " platform TEXT NOT NULL, token TEXT NOT NULL, label TEXT NOT NULL, created_at REAL NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS devices_by_caller ON devices (caller_id, created_at)",
    "CREATE TABLE IF NOT EXISTS push_choices (request_id TEXT PRIMARY KEY, choice TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS push_choices_by_age ON push_choices (at)",
)

_COLUMNS = "device_id, caller_id, platform, token, label, created_at"


def _device(row: Sequence[Any]) -> Device:
    device_id, caller_id, platform, token, label, created_at = row
    return Device(device_id, caller_id, DevicePlatform(platform), token, label, created_at)


def _fetch(db: sqlite3.Connection, device_id: str) -> Device | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM devices WHERE device_id = ?", (device_id,)).fetchone()
    return None if row is None else _device(row)


class SQLiteDevices:
    """Mixed into SQLiteStore."""

    if TYPE_CHECKING:
        _write: Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]
        _read: Callable[[Callable[[sqlite3.Connection], T]], Awaitable[T]]

    async def add_device(self, device: Device, cap: int) -> tuple[Device | None, bool]:
        def op(db: sqlite3.Connection) -> tuple[Device | None, bool]:
            existing = _fetch(db, device.device_id)
            if existing is not None:
                if existing.token != device.token:
                    db.execute("UPDATE devices SET token = ? WHERE device_id = ?", (device.token, device.device_id))
                    existing = _fetch(db, device.device_id)
                return existing, False
            (count,) = db.execute("SELECT COUNT(*) FROM devices WHERE caller_id = ?", (device.caller_id,)).fetchone()
            if count >= cap:
                return None, False
            db.execute(
                f"INSERT INTO devices ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (device.device_id, device.caller_id, str(device.platform), device.token, device.label, device.created_at),
            )
            return device, True

        return await self._write(op)

    async def list_devices(self, caller_id: str) -> list[Device]:
        query = f"SELECT {_COLUMNS} FROM devices WHERE caller_id = ? ORDER BY created_at, device_id"
        return await self._read(lambda db: [_device(row) for row in db.execute(query, (caller_id,)).fetchall()])

    async def get_device(self, device_id: str) -> Device | None:
        return await self._read(lambda db: _fetch(db, device_id))

    async def delete_device(self, caller_id: str, device_id: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute("DELETE FROM devices WHERE device_id = ? AND caller_id = ?", (device_id, caller_id))
            return cursor.rowcount > 0

        return await self._write(op)

    async def set_push_choice(self, request_id: str, choice: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            now = time.time()
            # Pruned here rather than in the store's periodic prune: few submits make a choice.
            db.execute("DELETE FROM push_choices WHERE at < ?", (now - REQUEST_TTL_SECONDS,))
            db.execute("INSERT OR REPLACE INTO push_choices (request_id, choice, at) VALUES (?, ?, ?)", (request_id, choice, now))

        await self._write(op)

    async def get_push_choice(self, request_id: str) -> str | None:
        query = "SELECT choice FROM push_choices WHERE request_id = ?"
        row = await self._read(lambda db: db.execute(query, (request_id,)).fetchone())
        return None if row is None else str(row[0])
