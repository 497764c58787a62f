"""SQLite housekeeping finds aged-out rows by index and deletes them in bounded batches, each its own short
transaction, so it never holds the store's one worker thread (or the write lock) for long."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from app.store.base import REQUEST_TTL_SECONDS
from app.store.sqlite import _PRUNE_BATCH, SQLiteStore

STALE = 30_000


def _plan(db: sqlite3.Connection, query: str) -> str:
    return " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + query, (0,)))


def test_every_prune_query_uses_an_index(tmp_path: Path) -> None:
    path = tmp_path / "falgate.db"

    async def migrate() -> None:
        store = SQLiteStore(str(path))
        await store.ping()
        await store.close()

    asyncio.run(migrate())
    db = sqlite3.connect(path)
    for table, condition in (
        ("slots", "expires_at <= ?"),
        ("idempotency", "expires_at <= ?"),
        ("spend", "day < ?"),
        ("requests", "created_at < ?"),
        ("completions", "received_at < ?"),
        ("event_logs", "updated_at < ?"),
        ("deliveries", "state != 'pending' AND updated_at < ?"),
    ):
        plan = _plan(db, f"SELECT rowid FROM {table} WHERE {condition} LIMIT 10")
        assert "INDEX" in plan and "SCAN" not in plan.replace("USING INDEX", ""), (table, plan)


@pytest.mark.parametrize("backlog", [STALE])
def test_a_backlog_is_pruned_in_short_rounds_between_calls(tmp_path: Path, backlog: int) -> None:
    path = tmp_path / "falgate.db"

    async def scenario() -> tuple[float, int]:
        store = SQLiteStore(str(path))
        await store.ping()
        old = time.time() - REQUEST_TTL_SECONDS - 3600
        with sqlite3.connect(path) as db:  # a week of traffic nobody pruned (another process's writes)
            db.executemany(
                "INSERT INTO requests (request_id, caller_id, model_id, app_id, created_at, state)"
                " VALUES (?, 'c', 'm', 'a', ?, 'COMPLETED')",
                [(f"old-{i}", old) for i in range(backlog)],
            )
        slowest = 0.0
        deadline = time.monotonic() + 30
        left = backlog
        while left and time.monotonic() < deadline:
            started = time.monotonic()
            await store.reserve_budget("caller", "2026-01-01", 0.01, 100.0)  # a write: it triggers a round
            slowest = max(slowest, time.monotonic() - started)
            with sqlite3.connect(path) as db:
                (left,) = db.execute("SELECT COUNT(*) FROM requests WHERE caller_id = 'c'").fetchone()
            await asyncio.sleep(0.05)
        await store.close()
        return slowest, left

    slowest, left = asyncio.run(scenario())
    assert left == 0
    # One round deletes at most _PRUNE_BATCH rows per table: a write waits for that, not the whole backlog.
    assert _PRUNE_BATCH < backlog
    assert slowest < 0.5, slowest
