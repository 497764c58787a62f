"""The embedded store: one aiosqlite connection (its own thread) on a WAL-mode file.

Several processes may open the same file: every check-and-set runs inside `BEGIN IMMEDIATE`, which
takes SQLite's write lock up front, so two connections can't both read the old value and both write.
Within one process an asyncio.Lock keeps tasks from interleaving statements on the shared connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from app.store.base import (
    PROGRESS_ORDER,
    REQUEST_TTL_SECONDS,
    SPEND_TTL_SECONDS,
    TERMINAL_STATES,
    RequestRecord,
    Store,
    StoredResponse,
    StoreUnavailable,
    check_progress_state,
    check_terminal_state,
    check_ttl,
    from_micros,
    to_micros,
)
from app.store.sqlite_relay import RELAY_MIGRATION, SQLiteRelay

T = TypeVar("T")
_Op = Callable[[aiosqlite.Connection], Awaitable[T]]

_BUSY_TIMEOUT_MS = 5000
_PRUNE_EVERY_SECONDS = 60.0

# MIGRATIONS[i] takes the schema from user_version i to i + 1. Append, never edit: a file already
# at version n only runs the entries after it.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        (
            "CREATE TABLE IF NOT EXISTS requests (request_id TEXT PRIMARY KEY, caller_id TEXT NOT NULL,"
            " model_id TEXT NOT NULL, app_id TEXT NOT NULL, created_at REAL NOT NULL, state TEXT NOT NULL,"
            " cost REAL NOT NULL DEFAULT 0, budget_day TEXT NOT NULL DEFAULT '', slot TEXT NOT NULL DEFAULT '')"
        ),
        "CREATE INDEX IF NOT EXISTS requests_by_caller ON requests (caller_id, created_at)",
        (
            "CREATE TABLE IF NOT EXISTS slots (caller_id TEXT NOT NULL, token TEXT NOT NULL,"
            " expires_at REAL NOT NULL, PRIMARY KEY (caller_id, token))"
        ),
        (
            "CREATE TABLE IF NOT EXISTS spend (caller_id TEXT NOT NULL, day TEXT NOT NULL,"
            " micros INTEGER NOT NULL, PRIMARY KEY (caller_id, day))"
        ),
        (  # status_code stays NULL while the claim is pending
            "CREATE TABLE IF NOT EXISTS idempotency (caller_id TEXT NOT NULL, key TEXT NOT NULL,"
            " fingerprint TEXT NOT NULL, status_code INTEGER, headers_json TEXT, body BLOB,"
            " expires_at REAL NOT NULL, PRIMARY KEY (caller_id, key))"
        ),
    ),
    RELAY_MIGRATION,  # requests.client_webhook, completions, event logs, the client-webhook outbox
    # A caller's expired slots are pruned and its live ones counted on every submit: by index, not a scan
    # of every slot the caller holds (found by bench/: submits slowed as slots piled up).
    ("CREATE INDEX IF NOT EXISTS slots_by_expiry ON slots (caller_id, expires_at)",),
)

# Column order == field order, so a row is RequestRecord(*row) and a record is astuple(record).
_REQUEST_COLUMNS = ", ".join(field.name for field in fields(RequestRecord))
_REQUEST_PLACEHOLDERS = ", ".join("?" for _ in fields(RequestRecord))
_TERMINAL_SQL = ", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES))


def _record(row: Iterable[Any]) -> RequestRecord:
    return RequestRecord(*row)


async def _one(db: aiosqlite.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first row of `query`, or None."""
    async with db.execute(query, params) as cursor:
        return await cursor.fetchone()


async def _rollback(db: aiosqlite.Connection) -> None:
    # SQLite may have rolled back already (e.g. after a disk error); the original exception matters more.
    with contextlib.suppress(sqlite3.Error):
        await db.execute("ROLLBACK")


class SQLiteStore(SQLiteRelay, Store):
    def __init__(self, path: str) -> None:
        self._path = path
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create the directory for {path}: {exc}") from exc
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._last_prune = 0.0

    # --- connection and transactions ---

    async def _connect(self) -> aiosqlite.Connection:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        if self._db is None:
            # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
            db = await aiosqlite.connect(self._path, isolation_level=None)
            try:
                await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                await db.execute("PRAGMA journal_mode = WAL")
                await db.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, far fewer fsyncs
                await self._migrate(db)
            except BaseException:
                await db.close()
                raise
            self._db = db
        return self._db

    @staticmethod
    async def _migrate(db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = await _one(db, "PRAGMA user_version")
            for step, statements in enumerate(MIGRATIONS[version:], start=version + 1):
                # Not executescript: it COMMITs first, and two processes opening a fresh file at once
                # must not both migrate. Inside BEGIN IMMEDIATE the second one sees the new version.
                for statement in statements:
                    await db.execute(statement)
                await db.execute(f"PRAGMA user_version = {step}")
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def _locked(self, op: _Op[T], write: bool) -> T:
        async with self._lock:
            try:
                db = await self._connect()
                if not write:
                    return await op(db)
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await self._maybe_prune(db)  # first, so it never deletes what `op` just wrote
                    result = await op(db)
                    await db.execute("COMMIT")
                except BaseException:
                    await _rollback(db)
                    raise
                return result
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"sqlite {self._path}: {exc}") from exc

    async def _write(self, op: _Op[T]) -> T:
        # Shielded: a cancelled caller must not leave BEGIN without COMMIT/ROLLBACK on the shared
        # connection. The transaction finishes in the background and only the result is dropped.
        return await asyncio.shield(self._locked(op, write=True))

    async def _read(self, op: _Op[T]) -> T:
        return await self._locked(op, write=False)

    async def _maybe_prune(self, db: aiosqlite.Connection) -> None:
        now = time.time()
        if now - self._last_prune < _PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        oldest_day = time.strftime("%Y-%m-%d", time.gmtime(now - SPEND_TTL_SECONDS))
        await db.execute("DELETE FROM slots WHERE expires_at <= ?", (now,))
        await db.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,))
        await db.execute("DELETE FROM spend WHERE day < ?", (oldest_day,))
        await db.execute("DELETE FROM requests WHERE created_at < ?", (now - REQUEST_TTL_SECONDS,))
        await self._prune_relay(db, now)

    async def ping(self) -> None:
        await self._read(lambda db: _one(db, "SELECT 1"))

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            if self._db is not None:
                db, self._db = self._db, None
                await db.close()

    # --- ownership ---

    async def record_request(self, record: RequestRecord) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            query = f"INSERT OR REPLACE INTO requests ({_REQUEST_COLUMNS}) VALUES ({_REQUEST_PLACEHOLDERS})"
            await db.execute(query, astuple(record))

        await self._write(op)

    @staticmethod
    async def _fetch(db: aiosqlite.Connection, request_id: str) -> RequestRecord | None:
        row = await _one(db, f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,))
        return None if row is None else _record(row)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        return await self._read(lambda db: self._fetch(db, request_id))

    async def list_requests(self, caller_id: str, limit: int = 50) -> list[RequestRecord]:
        async def op(db: aiosqlite.Connection) -> list[RequestRecord]:
            query = (
                f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE caller_id = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?"
            )
            async with db.execute(query, (caller_id, max(limit, 0))) as cur:
                return [_record(row) for row in await cur.fetchall()]

        return await self._read(op)

    async def set_state(self, request_id: str, state: str) -> RequestRecord | None:
        check_progress_state(state)

        async def op(db: aiosqlite.Connection) -> RequestRecord | None:
            record = await self._fetch(db, request_id)
            if record is None:
                return None
            current = PROGRESS_ORDER.get(record.state)
            if current is None or PROGRESS_ORDER[state] <= current:
                return record  # terminal, unknown, or not forward: leave it
            await db.execute("UPDATE requests SET state = ? WHERE request_id = ?", (state, request_id))
            return await self._fetch(db, request_id)

        return await self._write(op)

    async def finish_request(self, request_id: str, state: str) -> RequestRecord | None:
        check_terminal_state(state)

        async def op(db: aiosqlite.Connection) -> RequestRecord | None:
            cursor = await db.execute(
                f"UPDATE requests SET state = ? WHERE request_id = ? AND state NOT IN ({_TERMINAL_SQL})",
                (state, request_id),
            )
            if cursor.rowcount != 1:
                return None
            return await self._fetch(db, request_id)

        return await self._write(op)

    # --- in-flight slots ---

    async def acquire_slot(self, caller_id: str, token: str, limit: int, ttl: float) -> bool:
        check_ttl(ttl)

        async def op(db: aiosqlite.Connection) -> bool:
            now = time.time()
            await db.execute("DELETE FROM slots WHERE caller_id = ? AND expires_at <= ?", (caller_id, now))
            query = "SELECT COUNT(*), COALESCE(SUM(token = ?), 0) FROM slots WHERE caller_id = ?"
            held, mine = await _one(db, query, (token, caller_id))
            if not mine and held >= limit:
                return False
            await db.execute(
                "INSERT OR REPLACE INTO slots (caller_id, token, expires_at) VALUES (?, ?, ?)",
                (caller_id, token, now + ttl),
            )
            return True

        return await self._write(op)

    async def release_slot(self, caller_id: str, token: str) -> bool:
        async def op(db: aiosqlite.Connection) -> bool:
            row = await _one(db, "SELECT expires_at FROM slots WHERE caller_id = ? AND token = ?", (caller_id, token))
            if row is None:
                return False
            await db.execute("DELETE FROM slots WHERE caller_id = ? AND token = ?", (caller_id, token))
            return bool(row[0] > time.time())

        return await self._write(op)

    async def slots_in_use(self, caller_id: str) -> int:
        async def op(db: aiosqlite.Connection) -> int:
            query = "SELECT COUNT(*) FROM slots WHERE caller_id = ? AND expires_at > ?"
            (count,) = await _one(db, query, (caller_id, time.time()))
            return int(count)

        return await self._read(op)

    # --- budgets ---

    @staticmethod
    async def _micros(db: aiosqlite.Connection, caller_id: str, day: str) -> int:
        row = await _one(db, "SELECT micros FROM spend WHERE caller_id = ? AND day = ?", (caller_id, day))
        return int(row[0]) if row else 0

    async def reserve_budget(self, caller_id: str, day: str, amount: float, limit: float) -> tuple[bool, float]:
        amount_micros, limit_micros = to_micros(amount), to_micros(limit)

        async def op(db: aiosqlite.Connection) -> tuple[bool, float]:
            current = await self._micros(db, caller_id, day)
            if current + amount_micros > limit_micros:
                return False, from_micros(current)
            await db.execute(
                "INSERT INTO spend (caller_id, day, micros) VALUES (?, ?, ?)"
                " ON CONFLICT (caller_id, day) DO UPDATE SET micros = micros + excluded.micros",
                (caller_id, day, amount_micros),
            )
            return True, from_micros(current + amount_micros)

        return await self._write(op)

    async def refund_budget(self, caller_id: str, day: str, amount: float) -> float:
        amount_micros = to_micros(amount)

        async def op(db: aiosqlite.Connection) -> float:
            await db.execute(
                "UPDATE spend SET micros = MAX(micros - ?, 0) WHERE caller_id = ? AND day = ?",
                (amount_micros, caller_id, day),
            )
            return from_micros(await self._micros(db, caller_id, day))

        return await self._write(op)

    async def spent(self, caller_id: str, day: str) -> float:
        return from_micros(await self._read(lambda db: self._micros(db, caller_id, day)))

    # --- idempotency ---

    async def idempotency_begin(
        self, caller_id: str, key: str, fingerprint: str, ttl: float
    ) -> tuple[str, StoredResponse | None]:
        check_ttl(ttl)

        async def op(db: aiosqlite.Connection) -> tuple[str, StoredResponse | None]:
            now = time.time()
            scope = (caller_id, key)
            where = "WHERE caller_id = ? AND key = ?"
            await db.execute(f"DELETE FROM idempotency {where} AND expires_at <= ?", (*scope, now))
            row = await _one(db, f"SELECT fingerprint, status_code, headers_json, body FROM idempotency {where}", scope)
            if row is None:
                await db.execute(
                    "INSERT INTO idempotency (caller_id, key, fingerprint, expires_at) VALUES (?, ?, ?, ?)",
                    (*scope, fingerprint, now + ttl),
                )
                return "new", None
            stored_fingerprint, status_code, headers_json, body = row
            if stored_fingerprint != fingerprint:
                return "conflict", None
            if status_code is None:
                return "pending", None
            return "replay", StoredResponse(status_code, json.loads(headers_json), bytes(body))

        return await self._write(op)

    async def idempotency_complete(self, caller_id: str, key: str, response: StoredResponse, ttl: float) -> None:
        check_ttl(ttl)

        async def op(db: aiosqlite.Connection) -> None:
            now = time.time()
            await db.execute(
                "UPDATE idempotency SET status_code = ?, headers_json = ?, body = ?, expires_at = ?"
                " WHERE caller_id = ? AND key = ? AND expires_at > ?",
                (response.status_code, json.dumps(response.headers), response.body, now + ttl, caller_id, key, now),
            )

        await self._write(op)

    async def idempotency_abort(self, caller_id: str, key: str) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            await db.execute(
                "DELETE FROM idempotency WHERE caller_id = ? AND key = ? AND status_code IS NULL", (caller_id, key)
            )

        await self._write(op)
