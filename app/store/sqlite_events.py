"""The webhook relay's share of the SQLite store: completions, event logs and the client-webhook outbox.

A mixin for `SQLiteStore`: every method hands one synchronous function to the store's `_write` (run
on the store's worker thread as one `BEGIN IMMEDIATE` transaction, so a check-and-set can't interleave
with another connection's, even in another process) or `_read`. Its tables come from RELAY_MIGRATION in
app/store/sqlite_schema.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from app.store.base import (
    COMPLETION_TTL_SECONDS,
    DELIVERY_HISTORY_CAP,
    DELIVERY_TTL_SECONDS,
    EVENT_CAP,
    EVENT_TTL_SECONDS,
    Completion,
    Delivery,
    DeliveryState,
    Event,
    RequestRecord,
    RequestState,
    attempt_entry,
    check_completion,
    check_delivery,
    check_lease,
)
from app.store.sqlite_schema import TERMINAL_SQL

T = TypeVar("T")
_Op = Callable[[sqlite3.Connection], T]

_REQUEST_COLUMNS = ", ".join(field.name for field in fields(RequestRecord))
_STATE_COLUMN = [field.name for field in fields(RequestRecord)].index("state")
# Delivery's fields in order, with history stored as JSON text.
_DELIVERY_FIELDS = tuple(field.name for field in fields(Delivery))
_DELIVERY_COLUMNS = ", ".join("history_json" if field.name == "history" else field.name for field in fields(Delivery))
_DELIVERY_PLACEHOLDERS = ", ".join("?" for _ in fields(Delivery))
# A literal in the SQL, not a parameter: only then can the planner use the partial index deliveries_due.
_PENDING = f"'{DeliveryState.PENDING}'"


def _one(db: sqlite3.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    return db.execute(query, params).fetchone()


def _all(db: sqlite3.Connection, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    return db.execute(query, params).fetchall()


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def request_record(row: Sequence[Any]) -> RequestRecord:
    """A `requests` row (its columns in RequestRecord's field order) as a record."""
    values = list(row)
    values[_STATE_COLUMN] = RequestState(values[_STATE_COLUMN])
    return RequestRecord(*values)


def _delivery(row: Sequence[Any]) -> Delivery:
    values = dict(zip(_DELIVERY_FIELDS, row, strict=True))
    values["state"] = DeliveryState(values["state"])
    values["body"] = bytes(values["body"])
    values["history"] = tuple(json.loads(values["history"]))
    return Delivery(**values)


def _fetch_delivery(db: sqlite3.Connection, delivery_id: str) -> Delivery | None:
    row = _one(db, f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = ?", (delivery_id,))
    return None if row is None else _delivery(row)



def prune_batch(db: sqlite3.Connection, table: str, condition: str, cutoff: object, batch: int) -> bool:
    """Delete at most `batch` rows of `table` matching `condition` (one `?`, found by an index);
    True if that many went, so there may be more."""
    query = f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {condition} LIMIT {batch})"
    return db.execute(query, (cutoff,)).rowcount == batch

class SQLiteRelay:
    """Mixed into SQLiteStore, which provides `_write` and `_read`."""

    if TYPE_CHECKING:

        async def _write(self, op: _Op[T]) -> T: ...

        async def _read(self, op: _Op[T]) -> T: ...

    @staticmethod
    def _prune_relay(db: sqlite3.Connection, now: float, batch: int) -> bool:
        """One bounded round for the relay's tables; True if some had more to forget."""
        more = prune_batch(db, "completions", "received_at < ?", now - COMPLETION_TTL_SECONDS, batch)
        stale = [row[0] for row in db.execute(
            f"SELECT request_id FROM event_logs WHERE updated_at < ? LIMIT {batch}", (now - EVENT_TTL_SECONDS,)
        )]
        # Events by their primary key's request_id, a log's at a time; then the logs themselves.
        db.executemany("DELETE FROM events WHERE request_id = ?", [(request_id,) for request_id in stale])
        db.executemany("DELETE FROM event_logs WHERE request_id = ?", [(request_id,) for request_id in stale])
        more |= len(stale) == batch
        # Pending deliveries are still owed; only settled ones age out.
        settled = f"state != {_PENDING} AND updated_at < ?"
        return prune_batch(db, "deliveries", settled, now - DELIVERY_TTL_SECONDS, batch) or more

    # --- completions ---

    async def put_completion(self, completion: Completion) -> bool:
        check_completion(completion)
        payload = None if completion.payload is None else _json(completion.payload)

        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO completions (request_id, ok, payload_json, error, received_at, source)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    completion.request_id,
                    int(completion.ok),
                    payload,
                    completion.error,
                    completion.received_at,
                    completion.source,
                ),
            )
            return cursor.rowcount == 1

        return await self._write(op)

    @staticmethod
    def _completion(db: sqlite3.Connection, request_id: str) -> Completion | None:
        query = "SELECT ok, payload_json, error, received_at, source FROM completions WHERE request_id = ?"
        row = _one(db, query, (request_id,))
        if row is None:
            return None
        ok, payload_json, error, received_at, source = row
        payload = None if payload_json is None else json.loads(payload_json)
        return Completion(request_id, bool(ok), payload, error, received_at, source)

    async def get_completion(self, request_id: str) -> Completion | None:
        return await self._read(lambda db: self._completion(db, request_id))

    # --- events ---

    async def append_event(self, request_id: str, kind: str, data: dict, *, terminal: bool = False) -> Event | None:
        data_json = _json(data)  # serialize before the transaction: a bad payload fails without a write

        def op(db: sqlite3.Connection) -> Event | None:
            now = time.time()
            row = _one(db, "SELECT last_seq, terminal_seq FROM event_logs WHERE request_id = ?", (request_id,))
            if row is not None and row[1] is not None:
                return None  # the log is closed
            seq = (row[0] if row is not None else 0) + 1
            db.execute(
                "INSERT OR REPLACE INTO event_logs (request_id, last_seq, terminal_seq, updated_at)"
                " VALUES (?, ?, ?, ?)",
                (request_id, seq, seq if terminal else None, now),
            )
            db.execute(
                "INSERT INTO events (request_id, seq, kind, data_json, at) VALUES (?, ?, ?, ?, ?)",
                (request_id, seq, kind, data_json, now),
            )
            if seq > EVENT_CAP:  # drop the oldest; the newest (so any terminal one) stays
                db.execute("DELETE FROM events WHERE request_id = ? AND seq <= ?", (request_id, seq - EVENT_CAP))
            return Event(seq, kind, json.loads(data_json), now)

        return await self._write(op)

    async def events_after(self, request_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        def op(db: sqlite3.Connection) -> list[Event]:
            query = "SELECT seq, kind, data_json, at FROM events WHERE request_id = ? AND seq > ? ORDER BY seq LIMIT ?"
            rows = db.execute(query, (request_id, after_seq, max(limit, 0)))
            return [Event(seq, kind, json.loads(data_json), at) for seq, kind, data_json, at in rows]

        return await self._read(op)

    async def has_terminal_event(self, request_id: str) -> bool:
        query = "SELECT 1 FROM event_logs WHERE request_id = ? AND terminal_seq IS NOT NULL"
        return await self._read(lambda db: _one(db, query, (request_id,)) is not None)

    async def pending_requests(self, older_than: float, limit: int = 100, newer_than: float = 0.0) -> list[RequestRecord]:
        query = (
            f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE state NOT IN ({TERMINAL_SQL}) AND created_at < ?"
            " AND created_at > ? ORDER BY created_at LIMIT ?"
        )
        args = (older_than, newer_than, max(limit, 0))
        return await self._read(lambda db: [request_record(row) for row in db.execute(query, args)])

    # --- outbox ---

    async def enqueue_delivery(self, delivery: Delivery) -> bool:
        check_delivery(delivery)
        values = (
            *(getattr(delivery, f.name) for f in fields(Delivery) if f.name != "history"),
            _json(list(delivery.history)),
        )

        def op(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO deliveries ({_DELIVERY_COLUMNS}, lease_until, updated_at)"
                f" VALUES ({_DELIVERY_PLACEHOLDERS}, 0, ?)",
                (*values, time.time()),
            )
            return cursor.rowcount == 1

        return await self._write(op)

    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int = 10) -> list[Delivery]:
        check_lease(lease_seconds)

        def op(db: sqlite3.Connection) -> list[Delivery]:
            # Select and lease in one IMMEDIATE transaction: no other connection can pick the same rows.
            rows = _all(
                db,
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE state = {_PENDING} AND next_attempt_at <= ?"
                " AND lease_until <= ? ORDER BY next_attempt_at, rowid LIMIT ?",
                (now, now, max(limit, 0)),
            )
            claimed = [_delivery(row) for row in rows]
            db.executemany(
                "UPDATE deliveries SET lease_until = ? WHERE delivery_id = ?",
                [(now + lease_seconds, d.delivery_id) for d in claimed],
            )
            return claimed

        return await self._write(op)

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        ok: bool,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        next_attempt_at: float | None,
    ) -> Delivery | None:
        def op(db: sqlite3.Connection) -> Delivery | None:
            current = _fetch_delivery(db, delivery_id)
            if current is None:
                return None
            now = time.time()
            history = [*current.history, attempt_entry(now, status_code, error, duration_ms)][-DELIVERY_HISTORY_CAP:]
            state, due, delivered_at = current.state, current.next_attempt_at, current.delivered_at
            if state == DeliveryState.DELIVERED:
                pass  # a late report from a lapsed lease: logged, but delivered stays delivered
            elif ok:
                state, delivered_at = DeliveryState.DELIVERED, now
            elif next_attempt_at is None:
                state = DeliveryState.FAILED
            else:
                state, due = DeliveryState.PENDING, next_attempt_at
            db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, last_status = ?,"
                " last_error = ?, delivered_at = ?, history_json = ?, lease_until = 0, updated_at = ?"
                " WHERE delivery_id = ?",
                (state, due, status_code, error, delivered_at, _json(history), now, delivery_id),
            )
            return _fetch_delivery(db, delivery_id)

        return await self._write(op)

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        return await self._read(lambda db: _fetch_delivery(db, delivery_id))

    async def list_deliveries(self, caller_id: str, limit: int = 50) -> list[Delivery]:
        query = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE caller_id = ?"
            " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        )
        return await self._read(lambda db: [_delivery(row) for row in db.execute(query, (caller_id, max(limit, 0)))])

    async def redeliver(self, delivery_id: str, now: float) -> Delivery | None:
        def op(db: sqlite3.Connection) -> Delivery | None:
            # lease_until is left alone: an attempt in flight finishes before the re-send is claimable.
            db.execute(
                f"UPDATE deliveries SET state = {_PENDING}, next_attempt_at = ?, updated_at = ? WHERE delivery_id = ?",
                (now, time.time(), delivery_id),
            )
            return _fetch_delivery(db, delivery_id)

        return await self._write(op)

    async def outbox_depth(self) -> int:
        query = f"SELECT COUNT(*) FROM deliveries WHERE state = {_PENDING}"
        return await self._read(lambda db: int(_one(db, query)[0]))
