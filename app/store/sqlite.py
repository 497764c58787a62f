"""The embedded store: one plain sqlite3 connection on a WAL-mode file, owned by one worker thread.

Each public method is one synchronous function (for a write: BEGIN IMMEDIATE, the periodic prune, its
statements, then COMMIT or ROLLBACK) that the event loop hands to the store's worker thread and awaits
as a single future: one thread hop per call. A hop per statement, as with aiosqlite, cost a wake-up
and a GIL hand-over each, and the gateway spent much of its CPU in the kernel switching threads.

The worker runs those functions one at a time in submission order, so tasks never interleave
statements on the connection; it is the only thread that touches the connection (opened there on the
first call, with the PRAGMAs and migrations, and closed there by `close()`). WAL checkpoints, and their
fsyncs, run on a thread of their own (app/store/sqlite_checkpoint.py), never inside a store call.

Several processes may open the same file: every check-and-set runs inside `BEGIN IMMEDIATE`, which
takes SQLite's write lock up front, so two connections can't both read the old value and both write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from app.store.base import (
    PROGRESS_ORDER,
    REQUEST_TTL_SECONDS,
    SPEND_TTL_SECONDS,
    Completion,
    RequestRecord,
    RequestState,
    Store,
    StoredResponse,
    StoreUnavailable,
    check_progress_state,
    check_terminal_state,
    check_ttl,
    from_micros,
    to_micros,
)
from app.store.sqlite_checkpoint import Checkpointer
from app.store.sqlite_devices import SQLiteDevices
from app.store.sqlite_events import SQLiteRelay, prune_batch, request_record
from app.store.sqlite_open import BUSY_TIMEOUT_MS, first_row, open_database, rollback
from app.store.sqlite_schema import TERMINAL_SQL
from app.store.sqlite_worker import Worker

T = TypeVar("T")
log = logging.getLogger("falgate.store")
_Op = Callable[[sqlite3.Connection], T]

# A call waits for another process's lock only until _CALL_SECONDS after it was queued, its time behind
# other calls on the worker thread included: a locked database answers 503 within about two seconds
# however many calls are queued, instead of each one waiting out the whole lock in turn. Opening (and
# migrating) and the checkpointer wait BUSY_TIMEOUT_MS.
_CALL_SECONDS = 1.5
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_PRUNE_EVERY_SECONDS = 60.0
# Housekeeping deletes at most this many rows per table in one transaction (each found by an index),
# then lets the callers queued behind it run; a backlog is worked off a batch every _PRUNE_AGAIN_SECONDS.
_PRUNE_BATCH = 1000
_PRUNE_AGAIN_SECONDS = 0.2

# Column order == field order, so a row is request_record(row) and a record is _row(record).
_REQUEST_FIELDS = tuple(field.name for field in fields(RequestRecord))
_REQUEST_COLUMNS = ", ".join(_REQUEST_FIELDS)
_REQUEST_PLACEHOLDERS = ", ".join("?" for _ in fields(RequestRecord))


def _row(record: RequestRecord) -> tuple[Any, ...]:
    # Not dataclasses.astuple: it deep-copies every field, measurable on the submit path.
    return tuple(getattr(record, name) for name in _REQUEST_FIELDS)


class SQLiteStore(SQLiteRelay, SQLiteDevices, Store):
    def __init__(self, path: str) -> None:
        self._path = path
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create the directory for {path}: {exc}") from exc
        self._worker = Worker(name="falgate-sqlite")
        self._closing: asyncio.Future[None] | None = None
        # Touched only by the worker thread:
        self._db: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._prune_due = 0.0  # time.monotonic() of the next housekeeping round (on the loop)

    # --- in the worker thread ---

    def _run(self, op: _Op[T], write: bool, deadline: float) -> T:
        try:
            if self._db is None:
                self._db = self._connect()  # on first use; a failed open is retried by the next call
            db = self._db
            if not write:
                return self._without_lock_wait(db, deadline, lambda: op(db))
            # Inside BEGIN IMMEDIATE we hold the write lock, and under WAL nothing after it waits for one.
            self._without_lock_wait(db, deadline, lambda: db.execute("BEGIN IMMEDIATE"))
            try:
                result = op(db)
                db.execute("COMMIT")
            except BaseException:
                rollback(db)
                raise
            return result
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"sqlite {self._path}: {exc}") from exc

    def _without_lock_wait(self, db: sqlite3.Connection, deadline: float, attempt: Callable[[], T]) -> T:
        """`attempt()` at once; if another connection holds the lock, again with a wait up to `deadline`.

        The fast path costs nothing extra; a call that meets a lock first hands back the outcomes the
        worker holds (their callers must not wait with it) and waits only what is left of its time."""
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _BUSY_CODES:  # primary code of an extended one
                raise
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            raise StoreUnavailable(f"sqlite {self._path}: locked, and the call already waited {_CALL_SECONDS} s")
        self._worker.flush()
        db.execute(f"PRAGMA busy_timeout = {left_ms}")
        try:
            return attempt()
        finally:
            db.execute("PRAGMA busy_timeout = 0")

    def _prune(self, db: sqlite3.Connection) -> bool:
        """One bounded round of housekeeping; True if some table had more to forget."""
        now = time.time()
        oldest_day = time.strftime("%Y-%m-%d", time.gmtime(now - SPEND_TTL_SECONDS))
        more = False
        for table, condition, cutoff in (
            ("slots", "expires_at <= ?", now),
            ("idempotency", "expires_at <= ?", now),
            ("spend", "day < ?", oldest_day),
            ("requests", "created_at < ?", now - REQUEST_TTL_SECONDS),
        ):
            more |= prune_batch(db, table, condition, cutoff, _PRUNE_BATCH)
        return self._prune_relay(db, now, _PRUNE_BATCH) or more

    def _connect(self) -> sqlite3.Connection:
        db = open_database(self._path)
        if self._path != ":memory:" and self._checkpointer is None:
            db.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer's job, off the call path
            self._checkpointer = Checkpointer(self._path, BUSY_TIMEOUT_MS)
            self._checkpointer.start()
        return db

    def _disconnect(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    # --- on the event loop ---

    async def _submit(self, op: _Op[T], write: bool) -> T:
        if self._closing is not None:
            raise StoreUnavailable("the store is closed")
        return await self._worker.submit(partial(self._run, op, write, time.monotonic() + _CALL_SECONDS))

    async def _write(self, op: _Op[T]) -> T:
        # No asyncio.shield needed, by construction: cancelling this await cancels only the caller's
        # future. The function is already queued and runs its whole transaction, COMMIT or ROLLBACK
        # included; the worker then drops the result.
        if time.monotonic() >= self._prune_due and self._closing is None:
            self._start_prune()
        return await self._submit(op, write=True)

    def _start_prune(self) -> None:
        # Its own short transaction queued ahead of this write (so it never deletes what the write adds),
        # not part of the caller's: nobody awaits it, and a backlog is worked off in bounded rounds.
        self._prune_due = time.monotonic() + _PRUNE_EVERY_SECONDS
        future = self._worker.submit(partial(self._run, self._prune, True, time.monotonic() + _CALL_SECONDS))
        future.add_done_callback(self._pruned)

    def _pruned(self, future: asyncio.Future[bool]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:  # a locked or broken database: the next round retries
            log.info("sqlite housekeeping failed: %s", type(future.exception()).__name__)
        elif future.result():
            self._prune_due = time.monotonic() + _PRUNE_AGAIN_SECONDS

    async def _read(self, op: _Op[T]) -> T:
        return await self._submit(op, write=False)

    async def ping(self) -> None:
        await self._read(lambda db: first_row(db, "SELECT 1"))

    async def close(self) -> None:
        if self._closing is None:
            self._closing = self._worker.stop(self._disconnect)  # after the work already queued
        await asyncio.shield(self._closing)

    # --- ownership ---

    async def record_request(self, record: RequestRecord) -> Completion | None:
        def op(db: sqlite3.Connection) -> Completion | None:
            query = f"INSERT OR REPLACE INTO requests ({_REQUEST_COLUMNS}) VALUES ({_REQUEST_PLACEHOLDERS})"
            db.execute(query, _row(record))
            return self._completion(db, record.request_id)

        return await self._write(op)

    @staticmethod
    def _fetch(db: sqlite3.Connection, request_id: str) -> RequestRecord | None:
        row = first_row(db, f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE request_id = ?", (request_id,))
        return None if row is None else request_record(row)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        return await self._read(lambda db: self._fetch(db, request_id))

    async def list_requests(self, caller_id: str, limit: int = 50) -> list[RequestRecord]:
        query = (
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE caller_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        return await self._read(
            lambda db: [request_record(row) for row in db.execute(query, (caller_id, max(limit, 0)))]
        )

    async def set_state(self, request_id: str, state: RequestState) -> RequestRecord | None:
        check_progress_state(state)

        def op(db: sqlite3.Connection) -> RequestRecord | None:
            record = self._fetch(db, request_id)
            if record is None:
                return None
            current = PROGRESS_ORDER.get(record.state)
            if current is None or PROGRESS_ORDER[state] <= current:
                return record  # terminal, unknown, or not forward: leave it
            db.execute("UPDATE requests SET state = ? WHERE request_id = ?", (state, request_id))
            return self._fetch(db, request_id)

        return await self._write(op)

    async def finish_request(self, request_id: str, state: RequestState) -> RequestRecord | None:
        check_terminal_state(state)

        def op(db: sqlite3.Connection) -> RequestRecord | None:
            cursor = db.execute(
                f"UPDATE requests SET state = ? WHERE request_id = ? AND state NOT IN ({TERMINAL_SQL})",
                (state, request_id),
            )
            if cursor.rowcount != 1:
                return None
            return self._fetch(db, request_id)

        return await self._write(op)

    # --- in-flight slots ---

    async def acquire_slot(self, caller_id: str, token: str, limit: int, ttl: float) -> bool:
        check_ttl(ttl)

        def op(db: sqlite3.Connection) -> bool:
            now = time.time()
            db.execute("DELETE FROM slots WHERE caller_id = ? AND expires_at <= ?", (caller_id, now))
            renewed = db.execute(
                "UPDATE slots SET expires_at = ? WHERE caller_id = ? AND token = ?", (now + ttl, caller_id, token)
            )
            if renewed.rowcount:
                return True  # already held: a renewal, not one more slot
            row = first_row(db, "SELECT held FROM slot_counts WHERE caller_id = ?", (caller_id,))
            if row is not None and row[0] >= limit:
                return False
            db.execute("INSERT INTO slots (caller_id, token, expires_at) VALUES (?, ?, ?)", (caller_id, token, now + ttl))
            return True

        return await self._write(op)

    async def release_slot(self, caller_id: str, token: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            row = first_row(db, "SELECT expires_at FROM slots WHERE caller_id = ? AND token = ?", (caller_id, token))
            if row is None:
                return False
            db.execute("DELETE FROM slots WHERE caller_id = ? AND token = ?", (caller_id, token))
            return bool(row[0] > time.time())

        return await self._write(op)

    async def slots_in_use(self, caller_id: str) -> int:
        query = "SELECT COUNT(*) FROM slots WHERE caller_id = ? AND expires_at > ?"
        return await self._read(lambda db: int(first_row(db, query, (caller_id, time.time()))[0]))

    # --- budgets ---

    @staticmethod
    def _micros(db: sqlite3.Connection, caller_id: str, day: str) -> int:
        row = first_row(db, "SELECT micros FROM spend WHERE caller_id = ? AND day = ?", (caller_id, day))
        return int(row[0]) if row else 0

    async def reserve_budget(self, caller_id: str, day: str, amount: float, limit: float) -> tuple[bool, float]:
        amount_micros, limit_micros = to_micros(amount), to_micros(limit)

        def op(db: sqlite3.Connection) -> tuple[bool, float]:
            current = self._micros(db, caller_id, day)
            if current + amount_micros > limit_micros:
                return False, from_micros(current)
            db.execute(
                "INSERT INTO spend (caller_id, day, micros) VALUES (?, ?, ?)"
                " ON CONFLICT (caller_id, day) DO UPDATE SET micros = micros + excluded.micros",
                (caller_id, day, amount_micros),
            )
            return True, from_micros(current + amount_micros)

        return await self._write(op)

    async def refund_budget(self, caller_id: str, day: str, amount: float) -> float:
        amount_micros = to_micros(amount)

        def op(db: sqlite3.Connection) -> float:
            db.execute(
                "UPDATE spend SET micros = MAX(micros - ?, 0) WHERE caller_id = ? AND day = ?",
                (amount_micros, caller_id, day),
            )
            return from_micros(self._micros(db, caller_id, day))

        return await self._write(op)

    async def spent(self, caller_id: str, day: str) -> float:
        return await self._read(lambda db: from_micros(self._micros(db, caller_id, day)))

    # --- idempotency ---

    async def idempotency_begin(
        self, caller_id: str, key: str, fingerprint: str, ttl: float
    ) -> tuple[str, StoredResponse | None]:
        check_ttl(ttl)

        def op(db: sqlite3.Connection) -> tuple[str, StoredResponse | None]:
            now = time.time()
            scope = (caller_id, key)
            where = "WHERE caller_id = ? AND key = ?"
            db.execute(f"DELETE FROM idempotency {where} AND expires_at <= ?", (*scope, now))
            row = first_row(db, f"SELECT fingerprint, status_code, headers_json, body FROM idempotency {where}", scope)
            if row is None:
                db.execute(
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
        headers_json = json.dumps(response.headers)

        def op(db: sqlite3.Connection) -> None:
            now = time.time()
            db.execute(
                "UPDATE idempotency SET status_code = ?, headers_json = ?, body = ?, expires_at = ?"
                " WHERE caller_id = ? AND key = ? AND expires_at > ?",
                (response.status_code, headers_json, response.body, now + ttl, caller_id, key, now),
            )

        await self._write(op)

    async def idempotency_abort(self, caller_id: str, key: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM idempotency WHERE caller_id = ? AND key = ? AND status_code IS NULL", (caller_id, key)
            )

        await self._write(op)
