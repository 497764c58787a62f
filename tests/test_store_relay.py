"""The webhook relay's store contract (completions, events, outbox), run against SQLite and Redis alike."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.store import Completion, Delivery, DeliveryState, Event, RequestRecord, RequestState, Store, open_store
from app.store.base import DELIVERY_HISTORY_CAP, EVENT_CAP
from app.store.sqlite_schema import MIGRATIONS
from tests.store_backends import REDIS_URL, Backend

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = time.time()


def _record(request_id: str, created_at: float = NOW, **changes: Any) -> RequestRecord:
    base = RequestRecord(
        request_id,
        "alice",
        "fal-ai/kling-video/v2/master/image-to-video",
        "fal-ai/kling-video",
        created_at,
        RequestState.IN_QUEUE,
    )
    return replace(base, **changes)


def _completion(request_id: str = "r", **changes: Any) -> Completion:
    base = Completion(
        request_id, True, {"video": {"url": "https://v3.fal.media/x.mp4"}, "seed": 7}, None, NOW, "webhook"
    )
    return replace(base, **changes)


def _delivery(
    delivery_id: str | None = None, *, caller_id: str = "alice", due: float = NOW, **changes: Any
) -> Delivery:
    base = Delivery(
        delivery_id=delivery_id or uuid.uuid4().hex,
        request_id="r",
        caller_id=caller_id,
        url="https://client.example/hooks/fal",
        body=b'{"request_id":"r","status":"OK","payload":{"x":"\xc3\xa9"}}',
        state=DeliveryState.PENDING,
        attempts=0,
        next_attempt_at=due,
        created_at=NOW,
    )
    return replace(base, **changes)


# --- completions ---


async def test_first_completion_wins(store: Store) -> None:
    first = _completion(received_at=NOW + 0.123456789)
    assert await store.get_completion("r") is None
    assert await store.put_completion(first) is True
    assert await store.put_completion(_completion(ok=False, payload=None, error="boom", source="poll")) is False
    assert await store.get_completion("r") == first

    failed = _completion("r2", ok=False, payload=None, error="model crashed", source="stream")
    assert await store.put_completion(failed) is True
    assert await store.get_completion("r2") == failed
    with pytest.raises(ValueError):
        await store.put_completion(_completion("r3", source="carrier-pigeon"))


async def test_concurrent_completions_from_two_replicas_store_one(backend: Backend, store: Store) -> None:
    other = backend.open()
    candidates = [_completion(payload={"n": i}, source=("webhook", "stream", "poll")[i % 3]) for i in range(20)]
    won = await asyncio.gather(*((store, other)[i % 2].put_completion(c) for i, c in enumerate(candidates)))
    assert won.count(True) == 1
    winner = candidates[won.index(True)]
    assert await store.get_completion("r") == winner
    assert await other.get_completion("r") == winner


# --- events ---


async def test_events_append_in_order_and_read_after(store: Store) -> None:
    appended = [await store.append_event("r", "status", {"status": "IN_QUEUE", "position": i}) for i in range(5)]
    assert [e.seq for e in appended if e] == [1, 2, 3, 4, 5]
    events = await store.events_after("r")
    assert events == appended
    assert events[0] == Event(1, "status", {"status": "IN_QUEUE", "position": 0}, events[0].at)
    assert abs(events[0].at - time.time()) < 60
    assert [e.seq for e in await store.events_after("r", 3)] == [4, 5]
    assert [e.seq for e in await store.events_after("r", 1, limit=2)] == [2, 3]
    assert await store.events_after("r", 5) == []
    assert await store.events_after("other") == []
    assert await store.has_terminal_event("r") is False


async def test_event_data_round_trips(store: Store) -> None:
    data = {"logs": [{"message": "step 1/20 \u00e9\u2603", "level": "INFO"}], "empty": [], "nested": {}, "n": 1.5}
    event = await store.append_event("r", "logs", data)
    assert event is not None and event.data == data
    assert (await store.events_after("r"))[0].data == data


async def test_concurrent_appends_from_two_replicas_get_every_seq_once(backend: Backend, store: Store) -> None:
    other = backend.open()
    results = await asyncio.gather(*((store, other)[i % 2].append_event("r", "logs", {"i": i}) for i in range(50)))
    assert sorted(e.seq for e in results if e) == list(range(1, 51))
    events = await other.events_after("r")
    assert [e.seq for e in events] == list(range(1, 51))
    assert sorted(e.data["i"] for e in events) == list(range(50))
    by_seq = {e.seq: e.data for e in results if e}
    assert all(by_seq[e.seq] == e.data for e in events)  # each append got back the seq it was stored under


async def test_terminal_event_appears_once_and_closes_the_log(backend: Backend, store: Store) -> None:
    other = backend.open()
    await store.append_event("r", "status", {"status": "IN_PROGRESS"})
    racers = [
        (store, other)[i % 2].append_event("r", "completed" if i % 3 else "error", {"i": i}, terminal=True)
        for i in range(20)
    ]
    results = await asyncio.gather(*racers)
    terminals = [e for e in results if e is not None]
    assert len(terminals) == 1 and terminals[0].seq == 2
    assert await store.has_terminal_event("r") and await other.has_terminal_event("r")
    # Nothing follows the terminal event: consumers stop at it and miss nothing.
    assert await store.append_event("r", "logs", {"late": True}) is None
    assert await other.append_event("r", "completed", {}, terminal=True) is None
    assert await store.events_after("r") == [(await store.events_after("r"))[0], terminals[0]]


async def test_event_log_is_capped_keeping_the_newest_and_the_terminal(store: Store) -> None:
    for i in range(EVENT_CAP + 5):
        await store.append_event("r", "logs", {"i": i})
    terminal = await store.append_event("r", "completed", {"ok": True}, terminal=True)
    assert terminal is not None and terminal.seq == EVENT_CAP + 6
    events = await store.events_after("r", limit=EVENT_CAP + 100)
    assert len(events) == EVENT_CAP
    assert [e.seq for e in events] == list(range(7, EVENT_CAP + 7))  # contiguous: trimmed only at the old end
    assert events[-1] == terminal
    assert await store.has_terminal_event("r")


# --- requests the poller checks ---


async def test_pending_requests_are_the_old_unfinished_ones(store: Store) -> None:
    await store.record_request(_record("new", created_at=NOW))
    await store.record_request(_record("old-2", created_at=NOW - 200))
    await store.record_request(_record("old-1", created_at=NOW - 300, state="IN_PROGRESS"))
    await store.record_request(_record("old-done", created_at=NOW - 400))
    await store.finish_request("old-done", "COMPLETED")
    await store.record_request(_record("old-cancelled", created_at=NOW - 500, state="CANCELLED"))
    await store.record_request(_record("bob-old", created_at=NOW - 250, caller_id="bob"))

    pending = await store.pending_requests(older_than=NOW - 60)
    assert [r.request_id for r in pending] == ["old-1", "bob-old", "old-2"]  # oldest first, every caller
    assert pending[0] == _record("old-1", created_at=NOW - 300, state="IN_PROGRESS")
    assert [r.request_id for r in await store.pending_requests(NOW - 60, limit=2)] == ["old-1", "bob-old"]
    assert [r.request_id for r in await store.pending_requests(NOW + 1)][-1] == "new"
    assert await store.pending_requests(NOW - 1000) == []
    assert await store.pending_requests(NOW + 1, limit=0) == []

    await store.finish_request("bob-old", "FAILED")
    await store.record_request(_record("old-2", created_at=NOW - 200, state="COMPLETED"))  # replaced as finished
    assert [r.request_id for r in await store.pending_requests(NOW - 60)] == ["old-1"]


async def test_pending_requests_page_past_finished_ones(store: Store) -> None:
    for i in range(30):
        await store.record_request(_record(f"r{i:02}", created_at=NOW - 1000 + i))
    for i in range(0, 30, 2):
        await store.finish_request(f"r{i:02}", "COMPLETED")
    assert [r.request_id for r in await store.pending_requests(NOW, limit=5)] == ["r01", "r03", "r05", "r07", "r09"]
    assert len(await store.pending_requests(NOW, limit=100)) == 15


async def test_record_keeps_the_client_webhook(store: Store) -> None:
    record = _record("r", client_webhook="https://client.example/hooks/fal?token=a%2Fb")
    await store.record_request(record)
    assert await store.get_request("r") == record
    assert (await store.list_requests("alice"))[0].client_webhook == record.client_webhook
    assert (await store.finish_request("r", "COMPLETED")) == replace(record, state="COMPLETED")


# --- outbox ---


async def test_enqueue_is_idempotent_on_the_delivery_id(store: Store) -> None:
    delivery = _delivery("d1")
    assert await store.get_delivery("d1") is None
    assert await store.enqueue_delivery(delivery) is True
    assert await store.enqueue_delivery(replace(delivery, url="https://elsewhere.example", body=b"{}")) is False
    assert await store.get_delivery("d1") == delivery
    assert await store.outbox_depth() == 1
    with pytest.raises(ValueError):
        await store.enqueue_delivery(_delivery("bad", state="lost"))


async def test_claims_are_exclusive_across_replicas(backend: Backend, store: Store) -> None:
    other = backend.open()
    ids = {f"d{i:02}" for i in range(30)}
    for delivery_id in sorted(ids):
        await store.enqueue_delivery(_delivery(delivery_id, due=NOW - 1))
    claims = await asyncio.gather(
        *((store, other)[i % 2].claim_deliveries(NOW, lease_seconds=30, limit=3) for i in range(20))
    )
    claimed = [d.delivery_id for batch in claims for d in batch]
    assert len(claimed) == len(set(claimed)) == 30  # 20 claimers x 3 > 30: every one claimed exactly once
    assert set(claimed) == ids
    assert all(len(batch) <= 3 for batch in claims)
    assert await store.claim_deliveries(NOW + 29, lease_seconds=30) == []  # all leased
    assert await store.outbox_depth() == 30  # in flight is still pending

    # Their claimers died: once the leases lapse, the deliveries are claimable again, once.
    again = await asyncio.gather(
        *((store, other)[i % 2].claim_deliveries(NOW + 31, lease_seconds=30, limit=5) for i in range(10))
    )
    reclaimed = [d.delivery_id for batch in again for d in batch]
    assert sorted(reclaimed) == sorted(ids)


async def test_claim_takes_due_ones_oldest_first(store: Store) -> None:
    await store.enqueue_delivery(_delivery("later", due=NOW + 60))
    await store.enqueue_delivery(_delivery("second", due=NOW - 10))
    await store.enqueue_delivery(_delivery("first", due=NOW - 20))
    await store.enqueue_delivery(_delivery("settled", due=NOW - 30, state="delivered"))
    claimed = await store.claim_deliveries(NOW, lease_seconds=120, limit=1)
    assert [d.delivery_id for d in claimed] == ["first"]
    assert claimed[0] == _delivery("first", due=NOW - 20)
    assert [d.delivery_id for d in await store.claim_deliveries(NOW, lease_seconds=120)] == ["second"]
    assert await store.claim_deliveries(NOW, lease_seconds=30) == []
    assert [d.delivery_id for d in await store.claim_deliveries(NOW + 60, lease_seconds=30)] == ["later"]
    assert await store.claim_deliveries(NOW + 60, lease_seconds=30, limit=0) == []
    with pytest.raises(ValueError):
        await store.claim_deliveries(NOW, lease_seconds=0)


async def test_record_attempt_moves_a_delivery_along(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d", due=NOW))
    assert [d.delivery_id for d in await store.claim_deliveries(NOW, lease_seconds=30)] == ["d"]

    retry = await store.record_attempt(
        "d", ok=False, status_code=503, error="HTTP 503", duration_ms=120, next_attempt_at=NOW + 10
    )
    assert retry is not None
    assert (retry.state, retry.attempts, retry.next_attempt_at, retry.last_status, retry.last_error) == (
        "pending",
        1,
        NOW + 10,
        503,
        "HTTP 503",
    )
    assert [(h["status_code"], h["error"], h["duration_ms"]) for h in retry.history] == [(503, "HTTP 503", 120)]
    assert abs(retry.history[0]["at"] - time.time()) < 60
    assert await store.claim_deliveries(NOW + 5, lease_seconds=30) == []  # not due yet
    assert [d.delivery_id for d in await store.claim_deliveries(NOW + 10, lease_seconds=30)] == ["d"]  # lease freed

    timeout = await store.record_attempt(
        "d", ok=False, status_code=None, error="timed out", duration_ms=10000, next_attempt_at=NOW + 40
    )
    assert timeout is not None and timeout.last_status is None and timeout.attempts == 2
    assert [d.delivery_id for d in await store.claim_deliveries(NOW + 40, lease_seconds=30)] == ["d"]

    done = await store.record_attempt("d", ok=True, status_code=204, error=None, duration_ms=35, next_attempt_at=None)
    assert done is not None
    assert (done.state, done.attempts, done.last_status, done.last_error) == ("delivered", 3, 204, None)
    assert done.delivered_at is not None and abs(done.delivered_at - time.time()) < 60
    assert [h["status_code"] for h in done.history] == [503, None, 204]
    assert await store.claim_deliveries(NOW + 10_000, lease_seconds=30) == []  # never sent again
    assert await store.get_delivery("d") == done
    assert await store.outbox_depth() == 0

    # A claimer whose lease lapsed reports its failure late: logged, but delivered stays delivered.
    late = await store.record_attempt(
        "d", ok=False, status_code=500, error="HTTP 500", duration_ms=9, next_attempt_at=NOW + 99
    )
    assert late is not None and late.state == "delivered" and late.attempts == 4
    assert await store.claim_deliveries(NOW + 10_000, lease_seconds=30) == []

    assert (
        await store.record_attempt("nope", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None)
        is None
    )


async def test_delivery_states_come_back_as_delivery_states(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d"))
    read = [
        *await store.claim_deliveries(NOW, lease_seconds=30),
        await store.record_attempt("d", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None),
        await store.get_delivery("d"),
        *await store.list_deliveries("alice"),
        await store.redeliver("d", NOW),
    ]
    assert [type(delivery.state) for delivery in read if delivery is not None] == [DeliveryState] * 5
    assert [delivery.state for delivery in read if delivery is not None] == [
        DeliveryState.PENDING,
        DeliveryState.DELIVERED,
        DeliveryState.DELIVERED,
        DeliveryState.DELIVERED,
        DeliveryState.PENDING,
    ]


async def test_delivery_states_are_stored_as_their_plain_strings(tmp_path: Path, redis_prefix: str) -> None:
    assert [str(state) for state in DeliveryState] == ["pending", "delivered", "failed"]
    path = tmp_path / "store.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.enqueue_delivery(_delivery("d"))
        await store.record_attempt("d", ok=False, status_code=410, error="gone", duration_ms=1, next_attempt_at=None)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT state, typeof(state) FROM deliveries").fetchall() == [("failed", "text")]
    raw = aioredis.Redis.from_url(REDIS_URL)
    async with open_store(REDIS_URL, redis_prefix=redis_prefix) as store:
        await store.enqueue_delivery(_delivery("d"))
        assert await raw.hget(f"{redis_prefix}dlv:d", "state") == b"pending"
        await store.record_attempt("d", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None)
        assert await raw.hget(f"{redis_prefix}dlv:d", "state") == b"delivered"
    await raw.aclose()


async def test_giving_up_fails_the_delivery(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d"))
    await store.claim_deliveries(NOW, lease_seconds=30)
    failed = await store.record_attempt(
        "d", ok=False, status_code=410, error="HTTP 410", duration_ms=5, next_attempt_at=None
    )
    assert failed is not None and failed.state == "failed" and failed.delivered_at is None
    assert await store.claim_deliveries(NOW + 10_000, lease_seconds=30) == []
    assert await store.outbox_depth() == 0


async def test_history_keeps_the_newest_attempts(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d"))
    for i in range(DELIVERY_HISTORY_CAP + 3):
        last = await store.record_attempt(
            "d", ok=False, status_code=500, error=f"try {i}", duration_ms=i, next_attempt_at=NOW
        )
    assert last is not None and last.attempts == DELIVERY_HISTORY_CAP + 3
    assert len(last.history) == DELIVERY_HISTORY_CAP
    assert last.history[0]["error"] == "try 3" and last.history[-1]["error"] == f"try {DELIVERY_HISTORY_CAP + 2}"


async def test_redeliver_sends_again_whatever_the_state(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d"))
    await store.claim_deliveries(NOW, lease_seconds=30)
    await store.record_attempt("d", ok=True, status_code=200, error=None, duration_ms=5, next_attempt_at=None)

    again = await store.redeliver("d", NOW + 500)
    assert again is not None and (again.state, again.next_attempt_at, again.attempts) == ("pending", NOW + 500, 1)
    assert len(again.history) == 1
    assert await store.outbox_depth() == 1
    assert [d.delivery_id for d in await store.claim_deliveries(NOW + 500, lease_seconds=30)] == ["d"]
    failed = await store.record_attempt("d", ok=False, status_code=500, error="x", duration_ms=5, next_attempt_at=None)
    assert failed is not None and failed.state == "failed"
    assert (await store.redeliver("d", NOW + 600)).state == "pending"  # type: ignore[union-attr]
    assert await store.redeliver("nope", NOW) is None


async def test_redeliver_waits_for_the_attempt_in_flight(store: Store) -> None:
    await store.enqueue_delivery(_delivery("d"))
    assert len(await store.claim_deliveries(NOW, lease_seconds=30)) == 1
    await store.redeliver("d", NOW + 1)
    assert await store.claim_deliveries(NOW + 1, lease_seconds=30) == []  # still leased: no parallel send
    await store.record_attempt("d", ok=False, status_code=502, error="x", duration_ms=5, next_attempt_at=NOW + 2)
    assert [d.delivery_id for d in await store.claim_deliveries(NOW + 2, lease_seconds=30)] == ["d"]


async def test_list_deliveries_newest_first_per_caller(store: Store) -> None:
    for i in range(4):
        await store.enqueue_delivery(_delivery(f"a{i}", created_at=NOW + i))
    await store.enqueue_delivery(_delivery("b0", caller_id="bob", created_at=NOW + 10))
    assert [d.delivery_id for d in await store.list_deliveries("alice")] == ["a3", "a2", "a1", "a0"]
    assert [d.delivery_id for d in await store.list_deliveries("alice", limit=2)] == ["a3", "a2"]
    assert [d.delivery_id for d in await store.list_deliveries("bob")] == ["b0"]
    assert await store.list_deliveries("carol") == []
    assert await store.list_deliveries("alice", limit=0) == []
    await store.record_attempt("a3", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None)
    assert (await store.list_deliveries("alice"))[0].state == "delivered"


async def test_outbox_depth_counts_what_is_still_owed(store: Store) -> None:
    assert await store.outbox_depth() == 0
    due = {"leased": NOW - 10, "due": NOW, "later": NOW + 60, "done": NOW, "gone": NOW}
    for delivery_id, at in due.items():
        await store.enqueue_delivery(_delivery(delivery_id, due=at))
    assert [d.delivery_id for d in await store.claim_deliveries(NOW, lease_seconds=30, limit=1)] == ["leased"]
    await store.record_attempt("done", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None)
    await store.record_attempt("gone", ok=False, status_code=404, error="x", duration_ms=1, next_attempt_at=None)
    assert await store.outbox_depth() == 3  # due, waiting for later, and in flight


async def test_a_pending_delivery_survives_a_restart(backend: Backend, store: Store) -> None:
    delivery = _delivery("d", due=NOW)
    await store.enqueue_delivery(delivery)
    await store.append_event("r", "completed", {"ok": True}, terminal=True)
    await store.put_completion(_completion())
    await store.close()

    reopened = backend.open()
    assert await reopened.claim_deliveries(NOW, lease_seconds=30) == [delivery]
    assert await reopened.has_terminal_event("r")
    assert await reopened.get_completion("r") == _completion()


async def test_recording_a_request_returns_the_completion_that_came_first(store: Store) -> None:
    # fal's webhook can beat the submit's own record: the submit learns it from the same call.
    assert await store.record_request(_record("plain")) is None
    early = _completion("early")
    assert await store.put_completion(early) is True
    assert await store.record_request(_record("early")) == early


# --- backend specifics ---


async def test_sqlite_counts_the_slots_a_file_held_before_slots_were_counted(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    with sqlite3.connect(path) as db:
        for statement in (s for step in MIGRATIONS[:3] for s in step):
            db.execute(statement)
        db.execute("PRAGMA user_version = 3")
        db.executemany("INSERT INTO slots VALUES ('alice', ?, ?)", [(f"t{i}", NOW + 600) for i in range(3)])
    async with open_store(f"sqlite:///{path}") as store:
        assert not await store.acquire_slot("alice", "t3", limit=3, ttl=60)  # the three held before count
        assert await store.acquire_slot("alice", "t3", limit=4, ttl=60)
        assert await store.release_slot("alice", "t0")
        assert await store.acquire_slot("alice", "t4", limit=4, ttl=60)
        assert not await store.acquire_slot("alice", "t5", limit=4, ttl=60)


async def test_sqlite_migrates_a_version_1_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO requests VALUES ('old', 'alice', 'm', 'fal-ai/x', ?, 'IN_QUEUE', 0.5, '', '')", (NOW - 100,)
        )
    async with open_store(f"sqlite:///{path}") as store:
        assert await store.get_request("old") == RequestRecord(
            "old", "alice", "m", "fal-ai/x", NOW - 100, "IN_QUEUE", 0.5
        )
        assert [r.request_id for r in await store.pending_requests(NOW)] == ["old"]
        assert await store.enqueue_delivery(_delivery("d"))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_sqlite_checkpoints_the_wal_into_the_database_file(tmp_path: Path) -> None:
    # Checkpoints run on their own thread, not in a COMMIT: committed rows still reach the main file.
    path = tmp_path / "store.db"
    async with open_store(f"sqlite:///{path}") as store:
        for i in range(20):
            await store.record_request(_record(f"r{i}"))
        copy = tmp_path / "main-file-only.db"
        for _ in range(50):
            await asyncio.sleep(0.1)
            shutil.copyfile(path, copy)  # without the -wal file: only what was checkpointed
            with contextlib.closing(sqlite3.connect(copy)) as db:
                tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "requests" in tables and db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 20:
                    break
        else:
            raise AssertionError("the WAL was never checkpointed into the database file")


async def test_redis_relay_keys_expire(redis_prefix: str) -> None:
    raw = aioredis.Redis.from_url(REDIS_URL)
    async with open_store(REDIS_URL, redis_prefix=redis_prefix) as store:
        await store.put_completion(_completion())
        await store.append_event("r", "completed", {}, terminal=True)
        await store.enqueue_delivery(_delivery("d"))
        await store.record_attempt("d", ok=True, status_code=200, error=None, duration_ms=1, next_attempt_at=None)
    ttls = {
        key.decode()[len(redis_prefix) :]: await raw.ttl(key) async for key in raw.scan_iter(match=f"{redis_prefix}*")
    }
    await raw.aclose()
    assert set(ttls) == {"done:r", "evlog:r", "ev:r", "dlv:d", "dlvhist:d", "dlvs:alice"}
    assert 6 * 86400 < ttls["done:r"] <= 7 * 86400
    assert 0 < ttls["evlog:r"] <= 86400 and 0 < ttls["ev:r"] <= 86400
    assert all(0 < ttl <= 7 * 86400 for ttl in ttls.values()), ttls
