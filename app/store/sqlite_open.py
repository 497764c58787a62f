"""Opening the SQLite store's file: its PRAGMAs, and the migrations run inside BEGIN IMMEDIATE."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from app.store.sqlite_schema import MIGRATIONS

BUSY_TIMEOUT_MS = 1000  # how long opening, migrating and the checkpointer wait for another process's lock
_WAL_SIZE_LIMIT = 64 * 1024 * 1024


def first_row(db: sqlite3.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The first row of `query`, or None."""
    return db.execute(query, params).fetchone()


def rollback(db: sqlite3.Connection) -> None:
    # SQLite may have rolled back already (e.g. after a disk error); the original exception matters more.
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def open_database(path: str) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves. The worker
    # thread opens it and is the only one to use it, so sqlite3's same-thread check stays on as a guard.
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # durable enough under WAL, far fewer fsyncs
        db.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")  # the WAL shrinks back after a burst
        _migrate(db)
        # From here a call first tries without waiting; only one that meets a lock waits (see `_run`).
        db.execute("PRAGMA busy_timeout = 0")
    except BaseException:
        db.close()
        raise
    return db


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = first_row(db, "PRAGMA user_version")
        for step, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            # Not executescript: it COMMITs first, and two processes opening a fresh file at once
            # must not both migrate. Inside BEGIN IMMEDIATE the second one sees the new version.
            for statement in statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {step}")
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
