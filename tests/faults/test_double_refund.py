"""Once the submit is recorded, the stored record owns its slot and budget: no failure after that refunds.

fal's webhook is tried before the submit is answered (the emulator's `early` rule) and applying that
completion fails half-way: the store refuses the event log's writes (a private Redis by an ACL without the
`falgate:ev*` keys, SQLite by a trigger on `events`), so the record turns terminal but the completion's
events cannot be written. The caller's spend must stay exactly what its jobs cost (a failed job refunded
once, never twice) and its in-flight slots must return to 0; fal's retry, once the store accepts the
events again, finishes what was missed.

Before the fix, `ledger.commit` returned the early completion, applying it raised, and the handler then
abandoned the admission the record already owned: a completed job was refunded, a failed one twice. Today
the webhook receiver also answers 503 for a request not recorded yet (fal retries it after the commit), so
the same half-failure happens in the receiver instead; either way nothing may be refunded wrongly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from app.relay.client_webhooks import new_secret
from tests.faults.emulator_controls import FalControls
from tests.faults.private_redis import PrivateRedis
from tests.faults.tally import Tally
from tests.relay_helpers import (
    KLING,
    KLING_BODY,
    Receiver,
    auth_env,
    bearer,
    caller_keys,
    read_sse,
    wait_state,
    webhook_env,
)
from tests.servers import Server, start_emulator, start_gateway

# Every key but the event log's (ev:, evlog:): the record, ledger, completion and outbox keys all work.
_EVENTS_REFUSED = ("~falgate:[^e]*", "~falgate-*")
_REFUSE_EVENTS_SQL = (
    "CREATE TRIGGER IF NOT EXISTS refuse_events BEFORE INSERT ON events"
    " BEGIN SELECT RAISE(ABORT, 'events refused by the test'); END"
)


class _Store:
    """The gateway's store, whose event log the test can make refuse writes while everything else works."""

    def __init__(self, kind: str, redis_server: PrivateRedis) -> None:
        self.kind = kind
        if kind == "redis":
            self.url = redis_server.url
            self._admin = redis.Redis.from_url(redis_server.url)
        else:
            self._dir = tempfile.mkdtemp(prefix="falgate-refund-")
            self._path = f"{self._dir}/falgate.db"
            self.url = f"sqlite:///{self._path}"

    def refuse_events(self) -> None:
        if self.kind == "redis":
            # ACL changes apply at once to the gateway's open connections (all of them the default user).
            self._admin.execute_command("ACL", "SETUSER", "default", "resetkeys", *_EVENTS_REFUSED)
        else:
            self._sql(_REFUSE_EVENTS_SQL)  # the gateway's connection sees the schema change on its next write

    def allow_events(self) -> None:
        if self.kind == "redis":
            self._admin.execute_command("ACL", "SETUSER", "default", "resetkeys", "~*")
        else:
            self._sql("DROP TRIGGER IF EXISTS refuse_events")

    def close(self) -> None:
        if self.kind == "redis":
            self._admin.close()
        else:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _sql(self, statement: str) -> None:
        with contextlib.closing(sqlite3.connect(self._path, timeout=10)) as db:
            db.execute(statement)
            db.commit()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Server]:
    server = start_emulator(job_seconds=0.5, FALGATE_EMULATOR_KEEPALIVE_SECONDS="0.05")
    yield server
    server.stop()


def _second_request(client: httpx.Client, first: str) -> str:
    """The request recorded after `first` (the caller may not have been told its id, when the submit failed)."""
    [rid] = [r["request_id"] for r in client.get("/v1/requests").json()["requests"] if r["request_id"] != first]
    return rid


@pytest.mark.parametrize("outcome", ["ok", "failed"])
@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
def test_a_failure_applying_an_early_completion_refunds_nothing_twice(
    emulator: Server,
    fal: FalControls,
    receiver: Receiver,
    tally: Tally,
    private_redis: PrivateRedis,
    store_kind: str,
    outcome: str,
) -> None:
    keys = caller_keys("noa")
    store = _Store(store_kind, private_redis)
    gateway = start_gateway(
        emulator,
        FALGATE_STORE_URL=store.url,
        FALGATE_BUDGET_PER_DAY="100",
        FALGATE_WEBHOOK_GRACE_SECONDS="0",
        FALGATE_POLL_INTERVAL_SECONDS="0.3",
        **auth_env(keys),
        **webhook_env(new_secret()),
    )
    statuses: list[int] = []
    try:
        with httpx.Client(base_url=gateway.url, headers=bearer(keys["noa"]), timeout=30) as noa:
            # A first job, finished normally: it is what a second refund would eat into (spend never goes
            # below 0, so a double refund of the second job alone would not show).
            first = noa.post(f"/{KLING}", json=KLING_BODY, params={"fal_webhook": receiver.hook_url})
            assert first.status_code == 200, first.text
            receiver.wait_for(1, timeout=10)
            wait_state(noa, first.json()["request_id"], "COMPLETED", timeout=10)
            cost = noa.get("/v1/usage").json()["spent"]
            assert cost > 0, "a budget is set, so a job costs something"

            store.refuse_events()
            fal.webhook_rule("early")
            body = {**KLING_BODY, "prompt": "[fail] a cat"} if outcome == "failed" else KLING_BODY
            answer = noa.post(f"/{KLING}", json=body, params={"fal_webhook": receiver.hook_url})
            statuses.append(answer.status_code)
            time.sleep(1.0)  # fal's quick retries of the webhook fail the same way
            store.allow_events()

            rid = _second_request(noa, first.json()["request_id"])
            assert fal.send_webhook(rid), "fal's later retry of the webhook was refused"
            final = "FAILED" if outcome == "failed" else "COMPLETED"
            wait_state(noa, rid, final, timeout=10)
            receiver.wait_for(2, timeout=10)
            read = read_sse(gateway.url, f"/v1/requests/{rid}/events", headers=bearer(keys["noa"]), deadline=5)
            statuses.append(read.status)
            time.sleep(0.5)
            usage = noa.get("/v1/usage").json()
            expected = cost if outcome == "failed" else 2 * cost  # a failed job costs nothing, once
            bodies = [json.loads(r.body) for r in receiver.received if json.loads(r.body)["request_id"] == rid]
            tally.record(
                "store",
                results_lost=int(not bodies) + int(read.kinds[-1:] not in (["completed"], ["error"])),
                double_deliveries=max(0, len(bodies) - 1),
                wrong_refunds=int(abs(usage["spent"] - expected) > 1e-9) + int(usage["inflight"] != 0),
                undocumented_5xx=tally.undocumented_5xx(statuses),
            )
            assert usage["spent"] == pytest.approx(expected), f"spent {usage['spent']}, one job's cost is {cost}"
            assert usage["inflight"] == 0, usage
            assert answer.status_code == 200, f"fal took the job, yet the caller got {answer.status_code}"
            assert len(bodies) == 1 and bodies[0]["status"] == ("ERROR" if outcome == "failed" else "OK"), bodies
    finally:
        store.allow_events()
        gateway.stop()
        store.close()
