"""The store contract, run identically against SQLite and Redis (real Redis on db 15, isolated by key prefix)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.store import TERMINAL_STATES, RequestRecord, RequestState, Store, StoredResponse, StoreUnavailable, open_store
from app.store.sqlite_schema import TERMINAL_SQL
from tests.store_backends import REDIS_URL, Backend

# Fixtures and tests share the session loop: a store's connection must live on the loop that uses it.
pytestmark = pytest.mark.asyncio(loop_scope="session")

NOW = time.time()  # records and spend days near "now": both backends prune what is days old
DAY = time.strftime("%Y-%m-%d", time.gmtime(NOW))


def _record(request_id: str, caller_id: str = "alice", created_at: float = NOW, **changes: Any) -> RequestRecord:
    base = RequestRecord(
        request_id=request_id,
        caller_id=caller_id,
        model_id="fal-ai/kling-video/v2/master/image-to-video",
        app_id="fal-ai/kling-video",
        created_at=created_at,
        state=RequestState.IN_QUEUE,
        cost=0.35,
        budget_day=DAY,
        slot=f"slot-{request_id}",
    )
    return replace(base, **changes)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- ownership ---


async def test_record_roundtrip_and_replace(store: Store) -> None:
    record = _record("req-1", created_at=NOW + 0.123456789, cost=0.1 + 0.2)
    await store.record_request(record)
    assert await store.get_request("req-1") == record
    assert await store.get_request("nope") is None

    replaced = replace(record, state="IN_PROGRESS", cost=1.25, slot="", budget_day="")
    await store.record_request(replaced)
    assert await store.get_request("req-1") == replaced


async def test_list_requests_newest_first_and_scoped(store: Store) -> None:
    for i in range(5):
        await store.record_request(_record(f"a-{i}", "alice", created_at=NOW + i))
    for i in range(2):
        await store.record_request(_record(f"b-{i}", "bob", created_at=NOW + 10 + i))

    assert [r.request_id for r in await store.list_requests("alice")] == ["a-4", "a-3", "a-2", "a-1", "a-0"]
    assert [r.request_id for r in await store.list_requests("alice", limit=2)] == ["a-4", "a-3"]
    assert [r.request_id for r in await store.list_requests("bob")] == ["b-1", "b-0"]
    assert await store.list_requests("carol") == []
    assert await store.list_requests("alice", limit=0) == []


async def test_replacing_a_record_under_another_caller_moves_it(store: Store) -> None:
    await store.record_request(_record("r", "alice"))
    await store.record_request(_record("r", "bob"))
    assert await store.list_requests("alice") == []
    assert [r.caller_id for r in await store.list_requests("bob")] == ["bob"]


async def test_set_state_moves_forward_only(store: Store) -> None:
    await store.record_request(_record("r"))
    moved = await store.set_state("r", "IN_PROGRESS")
    assert moved is not None and moved.state == "IN_PROGRESS"
    # A late poll reporting IN_QUEUE doesn't undo progress.
    back = await store.set_state("r", "IN_QUEUE")
    assert back is not None and back.state == "IN_PROGRESS"
    assert await store.set_state("unknown", "IN_PROGRESS") is None
    with pytest.raises(ValueError):
        await store.set_state("r", "COMPLETED")


async def test_finish_request_hands_the_record_over_once(store: Store) -> None:
    record = _record("r", cost=0.7)
    await store.record_request(record)
    finished = await store.finish_request("r", "COMPLETED")
    assert finished == replace(record, state="COMPLETED")
    assert await store.finish_request("r", "CANCELLED") is None
    assert await store.finish_request("unknown", "FAILED") is None
    # A terminal record never moves back.
    after = await store.set_state("r", "IN_PROGRESS")
    assert after is not None and after.state == "COMPLETED"
    with pytest.raises(ValueError):
        await store.finish_request("r", "IN_PROGRESS")


async def test_states_come_back_as_request_states(store: Store) -> None:
    await store.record_request(_record("r"))
    read = [
        await store.get_request("r"),
        *await store.list_requests("alice"),
        *await store.pending_requests(NOW + 1),
        await store.set_state("r", RequestState.IN_PROGRESS),
        await store.finish_request("r", RequestState.COMPLETED),
    ]
    assert [type(record.state) for record in read if record is not None] == [RequestState] * 5
    assert read[-1] is not None and read[-1].state is RequestState.COMPLETED


async def test_states_are_stored_as_their_plain_strings(tmp_path: Path, redis_prefix: str) -> None:
    # The values are the stored format (and fal's own status strings): what was stored before still reads.
    assert [str(state) for state in RequestState] == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]
    # What the partial index requests_pending was created with; the queries repeat it to use the index.
    assert TERMINAL_SQL == "'CANCELLED', 'COMPLETED', 'FAILED'"
    path = tmp_path / "store.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.record_request(_record("r"))
        await store.finish_request("r", RequestState.CANCELLED)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT state, typeof(state) FROM requests").fetchall() == [("CANCELLED", "text")]
    raw = aioredis.Redis.from_url(REDIS_URL)
    async with open_store(REDIS_URL, redis_prefix=redis_prefix) as store:
        await store.record_request(_record("r"))
        await store.set_state("r", RequestState.IN_PROGRESS)
        assert await raw.hget(f"{redis_prefix}req:r", "state") == b"IN_PROGRESS"
    await raw.aclose()


@pytest.mark.parametrize("instances", [1, 2])
async def test_finish_request_race_has_one_winner(backend: Backend, store: Store, instances: int) -> None:
    stores = [store] + [backend.open() for _ in range(instances - 1)]
    await store.record_request(_record("race", state="IN_PROGRESS"))
    states = sorted(TERMINAL_STATES)
    results = await asyncio.gather(
        *(stores[i % instances].finish_request("race", states[i % len(states)]) for i in range(20))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert winners[0].slot == "slot-race" and winners[0].cost == 0.35 and winners[0].budget_day == DAY
    stored = await store.get_request("race")
    assert stored is not None and stored.state == winners[0].state


# --- in-flight slots ---


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_acquire_respects_limit(backend: Backend, store: Store, instances: int) -> None:
    stores = [store] + [backend.open() for _ in range(instances - 1)]
    results = await asyncio.gather(
        *(stores[i % instances].acquire_slot("alice", f"t{i}", limit=5, ttl=60) for i in range(20))
    )
    assert sum(results) == 5
    assert await store.slots_in_use("alice") == 5
    assert await store.slots_in_use("bob") == 0
    assert await store.acquire_slot("bob", "t0", limit=5, ttl=60)  # per caller

    held = [f"t{i}" for i, ok in enumerate(results) if ok]
    assert await store.release_slot("alice", held[0]) is True
    assert await store.release_slot("alice", held[0]) is False
    assert await store.release_slot("alice", "never-held") is False
    assert await store.slots_in_use("alice") == 4
    assert await store.acquire_slot("alice", "late", limit=5, ttl=60)
    assert not await store.acquire_slot("alice", "later", limit=5, ttl=60)


async def test_reacquiring_a_held_token_takes_no_extra_slot(store: Store) -> None:
    assert await store.acquire_slot("alice", "t", limit=1, ttl=60)
    assert await store.acquire_slot("alice", "t", limit=1, ttl=60)
    assert await store.slots_in_use("alice") == 1
    assert not await store.acquire_slot("alice", "other", limit=1, ttl=60)


async def test_slot_expires_by_itself(store: Store) -> None:
    assert await store.acquire_slot("alice", "leaked", limit=1, ttl=0.2)
    assert not await store.acquire_slot("alice", "next", limit=1, ttl=0.2)
    await asyncio.sleep(0.35)
    assert await store.slots_in_use("alice") == 0
    assert await store.release_slot("alice", "leaked") is False  # expired: it was no longer held
    assert await store.acquire_slot("alice", "next", limit=1, ttl=60)


async def test_expired_slots_stop_counting_against_the_limit(store: Store) -> None:
    for i in range(3):
        assert await store.acquire_slot("alice", f"short{i}", limit=3, ttl=0.2)
    assert not await store.acquire_slot("alice", "blocked", limit=3, ttl=60)
    await asyncio.sleep(0.35)
    for i in range(3):
        assert await store.acquire_slot("alice", f"long{i}", limit=3, ttl=60)
    assert not await store.acquire_slot("alice", "one-too-many", limit=3, ttl=60)
    assert await store.slots_in_use("alice") == 3


# --- budgets ---


@pytest.mark.parametrize("instances", [1, 2])
async def test_concurrent_reservations_never_pass_the_limit(backend: Backend, store: Store, instances: int) -> None:
    stores = [store] + [backend.open() for _ in range(instances - 1)]
    results = await asyncio.gather(*(stores[i % instances].reserve_budget("alice", DAY, 1.0, 10.0) for i in range(50)))
    passed = sorted(after for ok, after in results if ok)
    assert passed == [float(n) for n in range(1, 11)]
    assert all(now == 10.0 for ok, now in results if not ok)
    assert await store.spent("alice", DAY) == 10.0
    assert await store.spent("alice", "2099-01-01") == 0.0
    assert await store.spent("bob", DAY) == 0.0


async def test_budget_sums_exactly(store: Store) -> None:
    # As floats, ten 0.1s sum to 0.9999999999999999 and an 11th would sneak under 1.0 + epsilon.
    results = [await store.reserve_budget("alice", DAY, 0.1, 1.0) for _ in range(11)]
    assert [ok for ok, _ in results] == [True] * 10 + [False]
    assert await store.spent("alice", DAY) == 1.0
    assert await store.reserve_budget("alice", DAY, 0.0, 1.0) == (True, 1.0)


async def test_refund_never_goes_below_zero(store: Store) -> None:
    assert await store.reserve_budget("alice", DAY, 2.5, 10.0) == (True, 2.5)
    assert await store.refund_budget("alice", DAY, 1.0) == 1.5
    assert await store.refund_budget("alice", DAY, 5.0) == 0.0
    assert await store.spent("alice", DAY) == 0.0
    assert await store.refund_budget("bob", DAY, 1.0) == 0.0
    assert await store.reserve_budget("alice", DAY, 10.0, 10.0) == (True, 10.0)


async def test_budget_rejects_bad_amounts(store: Store) -> None:
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            await store.reserve_budget("alice", DAY, bad, 10.0)
        with pytest.raises(ValueError):
            await store.refund_budget("alice", DAY, bad)


# --- idempotency ---


async def test_idempotency_lifecycle(store: Store) -> None:
    response = StoredResponse(202, {"content-type": "application/json", "x-fal-request-id": "r1"}, b"\x00\xff{}")
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=60) == ("new", None)
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=60) == ("pending", None)
    assert await store.idempotency_begin("alice", "k", "fp2", ttl=60) == ("conflict", None)
    assert await store.idempotency_begin("bob", "k", "fp2", ttl=60) == ("new", None)  # scoped per caller

    await store.idempotency_complete("alice", "k", response, ttl=60)
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=60) == ("replay", response)
    assert await store.idempotency_begin("alice", "k", "fp2", ttl=60) == ("conflict", None)
    await store.idempotency_abort("alice", "k")  # a completed key is not a pending claim: it stays
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=60) == ("replay", response)


async def test_idempotency_abort_frees_the_key(store: Store) -> None:
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=60) == ("new", None)
    await store.idempotency_abort("alice", "k")
    # Completing an aborted claim stores nothing: there is no fingerprint to check replays against.
    await store.idempotency_complete("alice", "k", StoredResponse(200, {}, b""), ttl=60)
    assert await store.idempotency_begin("alice", "k", "fp2", ttl=60) == ("new", None)


async def test_idempotency_claim_expires(store: Store) -> None:
    assert await store.idempotency_begin("alice", "k", "fp1", ttl=0.2) == ("new", None)
    await asyncio.sleep(0.35)
    assert await store.idempotency_begin("alice", "k", "fp2", ttl=60) == ("new", None)


async def test_concurrent_begins_have_one_claimant(backend: Backend, store: Store) -> None:
    other = backend.open()
    results = await asyncio.gather(
        *((store, other)[i % 2].idempotency_begin("alice", "k", "fp", ttl=60) for i in range(20))
    )
    assert sorted(outcome for outcome, _ in results) == ["new"] + ["pending"] * 19


async def test_ids_with_separators_do_not_collide(store: Store) -> None:
    assert await store.idempotency_begin("a:b", "c", "fp1", ttl=60) == ("new", None)
    assert await store.idempotency_begin("a", "b:c", "fp2", ttl=60) == ("new", None)
    assert await store.reserve_budget("a:b", DAY, 1.0, 1.0) == (True, 1.0)
    assert await store.spent("a", f"b:{DAY}") == 0.0


# --- lifecycle ---


async def test_data_survives_a_restart(backend: Backend, store: Store) -> None:
    await store.record_request(_record("r"))
    await store.reserve_budget("alice", DAY, 3.0, 10.0)
    await store.acquire_slot("alice", "t", limit=5, ttl=60)
    await store.idempotency_begin("alice", "k", "fp", ttl=60)
    await store.close()

    reopened = backend.open()
    assert await reopened.get_request("r") == _record("r")
    assert await reopened.spent("alice", DAY) == 3.0
    assert await reopened.slots_in_use("alice") == 1
    assert await reopened.idempotency_begin("alice", "k", "fp", ttl=60) == ("pending", None)


async def test_closed_store_is_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_request("r")


async def test_sqlite_file_is_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "store.db"
    async with open_store(f"sqlite:///{path}") as store:
        await store.ping()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1


async def test_sqlite_prunes_what_expired(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    old_day = time.strftime("%Y-%m-%d", time.gmtime(NOW - 5 * 86400))
    async with open_store(f"sqlite:///{path}") as store:
        await store.record_request(_record("old", created_at=NOW - 8 * 86400))
        await store.record_request(_record("new"))
        await store.reserve_budget("alice", old_day, 1.0, 10.0)
        await store.reserve_budget("alice", DAY, 1.0, 10.0)
        await store.acquire_slot("alice", "t", limit=5, ttl=0.01)
        await store.idempotency_begin("alice", "k", "fp", ttl=0.01)
    await asyncio.sleep(0.05)
    async with open_store(f"sqlite:///{path}") as store:  # a fresh instance prunes on its first write
        await store.acquire_slot("bob", "t", limit=5, ttl=60)
        assert [r.request_id for r in await store.list_requests("alice")] == ["new"]
        assert await store.spent("alice", old_day) == 0.0
        assert await store.spent("alice", DAY) == 1.0
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT caller_id FROM slots").fetchall() == [("bob",)]
        assert db.execute("SELECT COUNT(*) FROM idempotency").fetchone() == (0,)


async def test_sqlite_in_memory() -> None:
    async with open_store("sqlite:///:memory:") as store:
        await store.record_request(_record("r"))
        assert await store.get_request("r") == _record("r")


async def test_sqlite_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnavailable):
        open_store(f"sqlite:///{tmp_path / 'a-file' / 'store.db'}")


async def test_redis_unreachable_is_unavailable_quickly() -> None:
    store = open_store(f"redis://127.0.0.1:{_closed_port()}/0")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.reserve_budget("alice", DAY, 1.0, 10.0)
    assert time.monotonic() - started < 5
    await store.close()


async def test_redis_url_at_something_else_is_unavailable() -> None:
    async def answer_like_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_like_http, "127.0.0.1", 0)
    store = open_store(f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()
        server.close()
        await server.wait_closed()


async def test_redis_keys_expire(redis_prefix: str) -> None:
    raw = aioredis.Redis.from_url(REDIS_URL)
    async with open_store(REDIS_URL, redis_prefix=redis_prefix) as store:
        await store.record_request(_record("r"))
        await store.reserve_budget("alice", DAY, 1.0, 10.0)
        await store.acquire_slot("alice", "t", limit=5, ttl=60)
    keys = [key.decode() async for key in raw.scan_iter(match=f"{redis_prefix}*")]
    assert len(keys) == 5  # record, caller index, pending index, spend, slots
    for key in keys:
        assert 0 < await raw.ttl(key) <= 7 * 86400, key
    assert 2 * 86400 < await raw.ttl(f"{redis_prefix}spend:alice:{DAY}") <= 3 * 86400
    await raw.aclose()


async def test_unknown_url_is_rejected() -> None:
    for url in ("postgres://x/y", "sqlite:///"):
        with pytest.raises(ValueError):
            open_store(url)
