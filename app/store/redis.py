"""The shared store for many replicas: redis.asyncio plus Lua scripts for every check-and-set.

A Lua script runs atomically on the server, so a read-decide-write in one cannot interleave with
another replica's. Slot expiry uses the server's clock (TIME) so replicas with skewed clocks agree.

Keys (prefix configurable so tests and several gateways can share one Redis):
    {p}req:{request_id}            hash   a RequestRecord, expires after REQUEST_TTL_SECONDS
    {p}reqs:{caller_id}            zset   request_id by created_at, trimmed to the newest REQUEST_INDEX_CAP;
                                          ids whose record expired are dropped when listing finds them
    {p}slots:{caller_id}           zset   slot token by expiry (server unix seconds)
    {p}spend:{caller_id}:{day}     string integer micro-dollars
    {p}idem:{caller_id}:{key}      hash   fingerprint [+ status_code, headers, body once completed]
    {p}pending                     zset   non-terminal request_id by created_at (the fallback poller's
                                          work list); ids whose record expired or finished are dropped
                                          when pending_requests finds them
The webhook relay's keys are listed in redis_events.py.
Variable parts are percent-encoded, so a ":" inside a caller id or key can't collide with another.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from app.store.base import (
    PROGRESS_ORDER,
    REQUEST_INDEX_CAP,
    REQUEST_TTL_SECONDS,
    SPEND_TTL_SECONDS,
    TERMINAL_STATES,
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
from app.store.redis_devices import RedisDevices
from app.store.redis_events import RedisRelay, completion_from_json
from app.store.redis_pool import UNAVAILABLE_ERRORS, redis_client

DEFAULT_PREFIX = "falgate:"

# KEYS[1] record; ARGV[1] new state, ARGV[2..] progress states in order. Only ever moves forward.
_SET_STATE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return nil end
local rank = {}
for i = 2, #ARGV do rank[ARGV[i]] = i end
if rank[state] and rank[ARGV[1]] > rank[state] then redis.call('HSET', KEYS[1], 'state', ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] record, KEYS[2] pending index; ARGV[1] terminal state, ARGV[2..] all terminal states. The
# one caller that flips the state gets the record back; every racer after it gets nil.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return nil end
for i = 2, #ARGV do if state == ARGV[i] then return nil end end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'request_id'))
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] slots; ARGV token, limit, ttl seconds. Expired members are pruned before counting.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2]) * 1000) + 1000)
return 1
"""

_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if expires and tonumber(expires) > now then return 1 end
return 0
"""

_IN_USE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1] spend; ARGV amount, limit (micros), ttl seconds. Returns {ok, micros}.
_RESERVE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, current} end
local after = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, after}
"""

_REFUND = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local after = math.max(tonumber(raw) - tonumber(ARGV[1]), 0)
redis.call('SET', KEYS[1], string.format('%d', after), 'KEEPTTL')
return after
"""

# KEYS[1] idem; ARGV fingerprint, ttl ms. Claim-or-report in one step (SET NX semantics on a hash).
_IDEM_BEGIN = """
local h = redis.call('HMGET', KEYS[1], 'fingerprint', 'status_code', 'headers', 'body')
if not h[1] then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'new'}
end
if h[1] ~= ARGV[1] then return {'conflict'} end
if not h[2] then return {'pending'} end
return {'replay', h[2], h[3], h[4]}
"""

# Completing needs the claim (it holds the fingerprint); a lapsed or aborted claim stays gone.
_IDEM_COMPLETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status_code', ARGV[1], 'headers', ARGV[2], 'body', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

_IDEM_ABORT = """
if redis.call('HEXISTS', KEYS[1], 'status_code') == 0 then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _record_from_flat(flat: Any) -> RequestRecord | None:
    """A record from a raw reply: HGETALL's dict, a Lua script's flat list, or nil."""
    if not flat:
        return None
    if isinstance(flat, list):  # HGETALL from Lua comes back as [field, value, field, value, ...]
        flat = dict(zip(flat[::2], flat[1::2], strict=True))
    fields = {key.decode(): value.decode() for key, value in flat.items()}
    return RequestRecord(
        request_id=fields["request_id"],
        caller_id=fields["caller_id"],
        model_id=fields["model_id"],
        app_id=fields["app_id"],
        created_at=float(fields["created_at"]),
        state=RequestState(fields["state"]),
        cost=float(fields.get("cost", "0")),
        budget_day=fields.get("budget_day", ""),
        slot=fields.get("slot", ""),
        client_webhook=fields.get("client_webhook", ""),
    )


def _record_to_hash(record: RequestRecord) -> dict[FieldT, EncodableT]:
    return {
        "request_id": record.request_id,
        "caller_id": record.caller_id,
        "model_id": record.model_id,
        "app_id": record.app_id,
        "created_at": repr(float(record.created_at)),  # repr round-trips a float exactly
        "state": record.state,
        "cost": repr(float(record.cost)),
        "budget_day": record.budget_day,
        "slot": record.slot,
        "client_webhook": record.client_webhook,
    }


class RedisStore(RedisRelay, RedisDevices, Store):
    def __init__(self, redis: str | aioredis.ConnectionPool, *, prefix: str = DEFAULT_PREFIX) -> None:
        """`redis`: the process's shared pool (left open by `close`), or a URL for a pool of the store's own."""
        self._prefix = prefix
        self._closed = False
        self._redis = redis_client(redis)
        register = self._redis.register_script
        self._set_state = register(_SET_STATE)
        self._finish = register(_FINISH)
        self._acquire = register(_ACQUIRE)
        self._release = register(_RELEASE)
        self._in_use = register(_IN_USE)
        self._reserve = register(_RESERVE)
        self._refund = register(_REFUND)
        self._idem_begin = register(_IDEM_BEGIN)
        self._idem_complete = register(_IDEM_COMPLETE)
        self._idem_abort = register(_IDEM_ABORT)
        self._register_relay_scripts()
        self._register_device_scripts()

    def _key(self, kind: str, *parts: str) -> str:
        return self._prefix + kind + "".join(":" + quote(part, safe="") for part in parts)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        try:
            yield
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def ping(self) -> None:
        with self._guard():
            await self._redis.ping()

    async def close(self) -> None:
        self._closed = True
        await self._redis.aclose()

    # --- ownership ---

    async def record_request(self, record: RequestRecord) -> Completion | None:
        key, index = self._key("req", record.request_id), self._key("reqs", record.caller_id)
        pending = self._key("pending")
        with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)  # replace, don't merge with a previous record's fields
                pipe.hset(key, mapping=_record_to_hash(record))
                pipe.expire(key, REQUEST_TTL_SECONDS)
                pipe.zadd(index, {record.request_id: record.created_at})
                pipe.zremrangebyrank(index, 0, -REQUEST_INDEX_CAP - 1)
                pipe.expire(index, REQUEST_TTL_SECONDS)
                if record.state in TERMINAL_STATES:
                    pipe.zrem(pending, record.request_id)
                else:
                    pipe.zadd(pending, {record.request_id: record.created_at})
                pipe.expire(pending, REQUEST_TTL_SECONDS)  # outlives every record it lists
                pipe.get(self._key("done", record.request_id))
                *_, early = await pipe.execute()
        return None if early is None else completion_from_json(record.request_id, early)

    async def get_request(self, request_id: str) -> RequestRecord | None:
        with self._guard():
            return _record_from_flat(await self._redis.hgetall(self._key("req", request_id)))

    async def list_requests(self, caller_id: str, limit: int = 50) -> list[RequestRecord]:
        if limit <= 0:
            return []
        index = self._key("reqs", caller_id)
        with self._guard():
            ids = cast(list[bytes], await self._redis.zrevrange(index, 0, limit - 1))
            if not ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for request_id in ids:
                    pipe.hgetall(self._key("req", request_id.decode()))
                rows = await pipe.execute()
            records = [_record_from_flat(row) for row in rows]
            # Index entries whose record expired, or was re-recorded under another caller, go.
            stale = [rid for rid, rec in zip(ids, records, strict=True) if rec is None or rec.caller_id != caller_id]
            if stale:
                await self._redis.zrem(index, *stale)
        return [rec for rec in records if rec is not None and rec.caller_id == caller_id]

    async def pending_requests(self, older_than: float, limit: int = 100, newer_than: float = 0.0) -> list[RequestRecord]:
        pending = self._key("pending")
        found: list[RequestRecord] = []
        with self._guard():
            while len(found) < limit:
                # Pages start after what was kept: stale ids found on the way are removed below.
                ids = cast(
                    list[bytes],
                    await self._redis.zrangebyscore(
                        pending, f"({newer_than!r}", f"({older_than!r}", start=len(found), num=limit
                    ),
                )
                if not ids:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    for request_id in ids:
                        pipe.hgetall(self._key("req", request_id.decode()))
                    records = [_record_from_flat(row) for row in await pipe.execute()]
                stale = [
                    rid for rid, rec in zip(ids, records, strict=True) if rec is None or rec.state in TERMINAL_STATES
                ]
                if stale:
                    await self._redis.zrem(pending, *stale)
                found += [rec for rec in records if rec is not None and rec.state not in TERMINAL_STATES]
                if len(ids) < limit:
                    break
        return found[:limit]

    async def set_state(self, request_id: str, state: RequestState) -> RequestRecord | None:
        check_progress_state(state)
        progress = sorted(PROGRESS_ORDER, key=PROGRESS_ORDER.__getitem__)
        with self._guard():
            flat = await self._set_state(keys=[self._key("req", request_id)], args=[state, *progress])
        return _record_from_flat(flat)

    async def finish_request(self, request_id: str, state: RequestState) -> RequestRecord | None:
        check_terminal_state(state)
        with self._guard():
            keys = [self._key("req", request_id), self._key("pending")]
            flat = await self._finish(keys=keys, args=[state, *sorted(TERMINAL_STATES)])
        return _record_from_flat(flat)

    # --- in-flight slots ---

    async def acquire_slot(self, caller_id: str, token: str, limit: int, ttl: float) -> bool:
        check_ttl(ttl)
        with self._guard():
            return bool(await self._acquire(keys=[self._key("slots", caller_id)], args=[token, limit, repr(ttl)]))

    async def release_slot(self, caller_id: str, token: str) -> bool:
        with self._guard():
            return bool(await self._release(keys=[self._key("slots", caller_id)], args=[token]))

    async def slots_in_use(self, caller_id: str) -> int:
        with self._guard():
            return int(await self._in_use(keys=[self._key("slots", caller_id)]))

    # --- budgets ---

    async def reserve_budget(self, caller_id: str, day: str, amount: float, limit: float) -> tuple[bool, float]:
        args = [to_micros(amount), to_micros(limit), SPEND_TTL_SECONDS]
        with self._guard():
            ok, micros = await self._reserve(keys=[self._key("spend", caller_id, day)], args=args)
        return bool(ok), from_micros(int(micros))

    async def refund_budget(self, caller_id: str, day: str, amount: float) -> float:
        amount_micros = to_micros(amount)
        with self._guard():
            micros = await self._refund(keys=[self._key("spend", caller_id, day)], args=[amount_micros])
        return from_micros(int(micros))

    async def spent(self, caller_id: str, day: str) -> float:
        with self._guard():
            raw = await self._redis.get(self._key("spend", caller_id, day))
        return from_micros(int(raw)) if raw is not None else 0.0

    # --- idempotency ---

    async def idempotency_begin(
        self, caller_id: str, key: str, fingerprint: str, ttl: float
    ) -> tuple[str, StoredResponse | None]:
        check_ttl(ttl)
        with self._guard():
            reply = await self._idem_begin(keys=[self._key("idem", caller_id, key)], args=[fingerprint, _ms(ttl)])
        outcome = reply[0].decode()
        if outcome != "replay":
            return outcome, None
        status_code, headers, body = reply[1:]
        return outcome, StoredResponse(int(status_code), json.loads(headers), bytes(body))

    async def idempotency_complete(self, caller_id: str, key: str, response: StoredResponse, ttl: float) -> None:
        check_ttl(ttl)
        args: list[EncodableT] = [response.status_code, json.dumps(response.headers), response.body, _ms(ttl)]
        with self._guard():
            await self._idem_complete(keys=[self._key("idem", caller_id, key)], args=args)

    async def idempotency_abort(self, caller_id: str, key: str) -> None:
        with self._guard():
            await self._idem_abort(keys=[self._key("idem", caller_id, key)])
