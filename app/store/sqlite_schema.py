"""The SQLite store's schema, as migrations: MIGRATIONS[i] takes a file from user_version i to i + 1.

Append, never edit: a file already at version n only runs the entries after it (app/store/sqlite_open.py
runs them inside BEGIN IMMEDIATE, so two processes opening a fresh file never both migrate).
"""

from __future__ import annotations

from app.store.base import TERMINAL_STATES
from app.store.sqlite_devices import DEVICES_MIGRATION

TERMINAL_SQL = ", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES))

RELAY_MIGRATION: tuple[str, ...] = (
    "ALTER TABLE requests ADD COLUMN client_webhook TEXT NOT NULL DEFAULT ''",
    # Partial: the poller's scan only ever looks at the few requests still running.
    f"CREATE INDEX IF NOT EXISTS requests_pending ON requests (created_at) WHERE state NOT IN ({TERMINAL_SQL})",
    (
        "CREATE TABLE IF NOT EXISTS completions (request_id TEXT PRIMARY KEY, ok INTEGER NOT NULL,"
        " payload_json TEXT, error TEXT, received_at REAL NOT NULL, source TEXT NOT NULL)"
    ),
    # One row per request's log: the last seq handed out survives the cap trimming old events, and
    # terminal_seq is the "closed" flag appends check.
    (
        "CREATE TABLE IF NOT EXISTS event_logs (request_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL,"
        " terminal_seq INTEGER, updated_at REAL NOT NULL)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS events (request_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,"
        " data_json TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (request_id, seq)) WITHOUT ROWID"
    ),
    (
        "CREATE TABLE IF NOT EXISTS deliveries (delivery_id TEXT PRIMARY KEY, request_id TEXT NOT NULL,"
        " caller_id TEXT NOT NULL, url TEXT NOT NULL, body BLOB NOT NULL, state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL,"
        " last_status INTEGER, last_error TEXT, delivered_at REAL, history_json TEXT NOT NULL DEFAULT '[]',"
        " lease_until REAL NOT NULL DEFAULT 0, updated_at REAL NOT NULL)"
    ),
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS deliveries_by_caller ON deliveries (caller_id, created_at)",
)

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
    # ...and counted in O(1): COUNT(*) over a caller's slots still read every one of them (thousands for
    # a backend with many jobs in flight). Triggers keep the count, whichever statement adds or removes
    # a slot; slots are never replaced in place (REPLACE would skip the delete trigger).
    (
        "CREATE TABLE IF NOT EXISTS slot_counts (caller_id TEXT PRIMARY KEY, held INTEGER NOT NULL)",
        "INSERT OR REPLACE INTO slot_counts (caller_id, held) SELECT caller_id, COUNT(*) FROM slots GROUP BY caller_id",
        (
            "CREATE TRIGGER IF NOT EXISTS slots_counted_in AFTER INSERT ON slots BEGIN"
            " INSERT INTO slot_counts (caller_id, held) VALUES (new.caller_id, 1)"
            " ON CONFLICT (caller_id) DO UPDATE SET held = held + 1; END"
        ),
        (
            "CREATE TRIGGER IF NOT EXISTS slots_counted_out AFTER DELETE ON slots BEGIN"
            " UPDATE slot_counts SET held = held - 1 WHERE caller_id = old.caller_id; END"
        ),
    ),
    # Housekeeping finds what aged out by index, in bounded batches, rather than scanning whole tables
    # inside a write transaction (which held the one worker thread and the write lock every minute).
    (
        "CREATE INDEX IF NOT EXISTS slots_by_expiry_only ON slots (expires_at)",
        "CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires_at)",
        "CREATE INDEX IF NOT EXISTS spend_by_day ON spend (day)",
        "CREATE INDEX IF NOT EXISTS requests_by_age ON requests (created_at)",
        "CREATE INDEX IF NOT EXISTS completions_by_age ON completions (received_at)",
        "CREATE INDEX IF NOT EXISTS event_logs_by_age ON event_logs (updated_at)",
        "CREATE INDEX IF NOT EXISTS deliveries_settled ON deliveries (updated_at) WHERE state != 'pending'",
    ),
    DEVICES_MIGRATION,  # push devices (app/store/sqlite_devices.py)
)
