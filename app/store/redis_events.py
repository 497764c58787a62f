"""The webhook relay's share of the Redis store: completions, event logs and the client-webhook outbox.

A mixin for `RedisStore` (which provides `_redis`, `_key`, `_guard`). Each check-and-set is one Lua
script, so replicas racing on the same request or delivery see each other's writes whole.

Keys (besides those listed in redis.py):
    {p}done:{request_id}        string  the first Completion (JSON), SET NX
    {p}evlog:{request_id}       hash    seq (last handed out), terminal (its seq, once the log is closed)
    {p}ev:{request_id}          zset    event JSON by seq, the newest EVENT_CAP; both expire
                                        EVENT_TTL_SECONDS after the last append
    {p}dlv:{delivery_id}        hash    a Delivery (optional fields as JSON)
    {p}dlvhist:{delivery_id}    list    its attempt history (JSON entries), newest last, capped
    {p}dlvs:{caller_id}         zset    delivery_id by created_at (newest DELIVERY_INDEX_CAP)
    {p}outbox:due               zset    pending, unleased delivery_id by next_attempt_at
    {p}outbox:leased            zset    claimed delivery_id by lease expiry; a pending delivery is in
                                        exactly one of the two, which is what makes claims exclusive
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, cast

from redis.typing import EncodableT

from app.store.base import (
    COMPLETION_TTL_SECONDS,
    DELIVERY_HISTORY_CAP,
    DELIVERY_INDEX_CAP,
    DELIVERY_TTL_SECONDS,
    EVENT_CAP,
    EVENT_TTL_SECONDS,
    Completion,
    Delivery,
    DeliveryState,
    Event,
    attempt_entry,
    check_completion,
    check_delivery,
    check_lease,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript

# KEYS evlog, ev; ARGV terminal ("1"/"0"), event JSON without its seq, cap, ttl. Returns the seq, or
# nil once the log is closed. The seq goes in as the member's first field, so members never collide.
_APPEND_EVENT = """
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return nil end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'terminal', seq) end
redis.call('ZADD', KEYS[2], seq, '{"seq":' .. string.format('%d', seq) .. ',' .. string.sub(ARGV[2], 2))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return seq
"""

# The scripts below write DeliveryState's values literally: 'pending', 'delivered', 'failed'.

# KEYS dlv, hist, due, index; ARGV id, created_at, next_attempt_at, state, ttl, index cap,
# n (number of hash field/value args), the n args, then history entries.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = tonumber(ARGV[7])
redis.call('HSET', KEYS[1], unpack(ARGV, 8, 7 + n))
redis.call('EXPIRE', KEYS[1], ARGV[5])
if #ARGV > 7 + n then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 8 + n))
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if ARGV[4] == 'pending' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[4], ARGV[5])
return 1
"""

# KEYS due, leased; ARGV now, lease until, limit. Lapsed leases go back to due first (their claimer
# died mid-attempt), then the oldest due ids move to leased.
_CLAIM = """
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
return ids
"""

# KEYS dlv, hist, due, leased; ARGV id, ok, last_status, last_error (JSON), next ("" = give up),
# delivered_at (JSON), history entry, cap, ttl. Returns {HGETALL, history} or nil if unknown.
_RECORD_ATTEMPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return nil end
redis.call('ZREM', KEYS[4], ARGV[1])
if state ~= 'delivered' then
  if ARGV[2] == '1' then
    state = 'delivered'
    redis.call('HSET', KEYS[1], 'delivered_at', ARGV[6])
    redis.call('ZREM', KEYS[3], ARGV[1])
  elseif ARGV[5] == '' then
    state = 'failed'
    redis.call('ZREM', KEYS[3], ARGV[1])
  else
    state = 'pending'
    redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[5])
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
  end
end
redis.call('HSET', KEYS[1], 'state', state, 'last_status', ARGV[3], 'last_error', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('RPUSH', KEYS[2], ARGV[7])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[8]), -1)
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# KEYS dlv, hist, due, leased; ARGV id, now, ttl. A leased delivery stays out of due: its attempt in
# flight reports first (or its lease lapses), so the re-send never runs alongside it.
_REDELIVER = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HSET', KEYS[1], 'state', 'pending', 'next_attempt_at', ARGV[2])
if not redis.call('ZSCORE', KEYS[4], ARGV[1]) then redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _delivery_to_hash(delivery: Delivery) -> dict[str, EncodableT]:
    return {
        "delivery_id": delivery.delivery_id,
        "request_id": delivery.request_id,
        "caller_id": delivery.caller_id,
        "url": delivery.url,
        "body": delivery.body,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "next_attempt_at": repr(float(delivery.next_attempt_at)),  # repr round-trips a float exactly
        "created_at": repr(float(delivery.created_at)),
        "last_status": _json(delivery.last_status),
        "last_error": _json(delivery.last_error),
        "delivered_at": _json(delivery.delivered_at),
    }


def _delivery_from_reply(flat: Any, history: list[bytes]) -> Delivery | None:
    """A delivery from HGETALL (a dict, or a flat list when it comes from Lua) and its history list."""
    if not flat:
        return None
    if isinstance(flat, list):
        flat = dict(zip(flat[::2], flat[1::2], strict=True))
    raw = {key.decode(): value for key, value in flat.items()}
    text = {key: value.decode() for key, value in raw.items() if key != "body"}
    return Delivery(
        delivery_id=text["delivery_id"],
        request_id=text["request_id"],
        caller_id=text["caller_id"],
        url=text["url"],
        body=bytes(raw["body"]),
        state=DeliveryState(text["state"]),
        attempts=int(text["attempts"]),
        next_attempt_at=float(text["next_attempt_at"]),
        created_at=float(text["created_at"]),
        last_status=json.loads(text["last_status"]),
        last_error=json.loads(text["last_error"]),
        delivered_at=json.loads(text["delivered_at"]),
        history=tuple(json.loads(entry) for entry in history),
    )


def completion_from_json(request_id: str, raw: str | bytes) -> Completion:
    fields = json.loads(raw)
    return Completion(request_id, fields["ok"], fields["payload"], fields["error"], fields["received_at"], fields["source"])


class RedisRelay:
    """Mixed into RedisStore."""

    if TYPE_CHECKING:
        _redis: aioredis.Redis

        def _key(self, kind: str, *parts: str) -> str: ...

        def _guard(self) -> contextlib.AbstractContextManager[None]: ...

    def _register_relay_scripts(self) -> None:
        register = self._redis.register_script
        self._append_event: AsyncScript = register(_APPEND_EVENT)
        self._enqueue: AsyncScript = register(_ENQUEUE)
        self._claim: AsyncScript = register(_CLAIM)
        self._record_attempt: AsyncScript = register(_RECORD_ATTEMPT)
        self._redeliver: AsyncScript = register(_REDELIVER)

    # --- completions ---

    async def put_completion(self, completion: Completion) -> bool:
        check_completion(completion)
        value = _json(
            {
                "ok": completion.ok,
                "payload": completion.payload,
                "error": completion.error,
                "received_at": completion.received_at,
                "source": completion.source,
            }
        )
        with self._guard():
            stored = await self._redis.set(
                self._key("done", completion.request_id), value, nx=True, ex=COMPLETION_TTL_SECONDS
            )
        return bool(stored)

    async def get_completion(self, request_id: str) -> Completion | None:
        with self._guard():
            raw = await self._redis.get(self._key("done", request_id))
        return None if raw is None else completion_from_json(request_id, raw)

    # --- events ---

    async def append_event(self, request_id: str, kind: str, data: dict, *, terminal: bool = False) -> Event | None:
        at = time.time()
        body = _json({"kind": kind, "data": data, "at": at})
        keys = [self._key("evlog", request_id), self._key("ev", request_id)]
        with self._guard():
            seq = await self._append_event(
                keys=keys, args=["1" if terminal else "0", body, EVENT_CAP, EVENT_TTL_SECONDS]
            )
        if seq is None:
            return None
        return Event(int(seq), kind, json.loads(body)["data"], at)

    async def events_after(self, request_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        if limit <= 0:
            return []
        with self._guard():
            members = await self._redis.zrangebyscore(
                self._key("ev", request_id), f"({int(after_seq)}", "+inf", start=0, num=limit
            )
        events = [json.loads(member) for member in cast(list[bytes], members)]
        return [Event(e["seq"], e["kind"], e["data"], e["at"]) for e in events]

    async def has_terminal_event(self, request_id: str) -> bool:
        with self._guard():
            return bool(await self._redis.hexists(self._key("evlog", request_id), "terminal"))

    # --- outbox ---

    def _outbox_keys(self) -> tuple[str, str]:
        """(due, leased)"""
        return self._key("outbox", "due"), self._key("outbox", "leased")

    def _delivery_keys(self, delivery_id: str) -> list[str]:
        """What the delivery scripts take: its hash, its history, then the outbox's due and leased sets."""
        return [self._key("dlv", delivery_id), self._key("dlvhist", delivery_id), *self._outbox_keys()]

    async def enqueue_delivery(self, delivery: Delivery) -> bool:
        check_delivery(delivery)
        pairs = [item for pair in _delivery_to_hash(delivery).items() for item in pair]
        history = [_json(entry) for entry in delivery.history[-DELIVERY_HISTORY_CAP:]]
        dlv, hist, due, _ = self._delivery_keys(delivery.delivery_id)
        args: list[EncodableT] = [
            delivery.delivery_id,
            repr(float(delivery.created_at)),
            repr(float(delivery.next_attempt_at)),
            delivery.state,
            DELIVERY_TTL_SECONDS,
            DELIVERY_INDEX_CAP,
            len(pairs),
            *pairs,
            *history,
        ]
        with self._guard():
            added = await self._enqueue(keys=[dlv, hist, due, self._key("dlvs", delivery.caller_id)], args=args)
        return bool(added)

    async def _fetch_deliveries(self, ids: list[bytes]) -> list[Delivery | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for raw_id in ids:
                dlv, hist, *_ = self._delivery_keys(raw_id.decode())
                pipe.hgetall(dlv)
                pipe.lrange(hist, 0, -1)
            replies = await pipe.execute()
        return [_delivery_from_reply(flat, hist) for flat, hist in zip(replies[::2], replies[1::2], strict=True)]

    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int = 10) -> list[Delivery]:
        check_lease(lease_seconds)
        if limit <= 0:
            return []
        due, leased = self._outbox_keys()
        with self._guard():
            ids = await self._claim(
                keys=[due, leased], args=[repr(float(now)), repr(float(now + lease_seconds)), limit]
            )
            if not ids:
                return []
            deliveries = await self._fetch_deliveries(ids)
            # A delivery whose record expired (pending, untouched for DELIVERY_TTL_SECONDS) is dropped.
            gone = [raw_id for raw_id, found in zip(ids, deliveries, strict=True) if found is None]
            if gone:
                await self._redis.zrem(leased, *gone)
        return [found for found in deliveries if found is not None]

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
        now = time.time()
        args: list[EncodableT] = [
            delivery_id,
            "1" if ok else "0",
            _json(status_code),
            _json(error),
            "" if next_attempt_at is None else repr(float(next_attempt_at)),
            _json(now),
            _json(attempt_entry(now, status_code, error, duration_ms)),
            DELIVERY_HISTORY_CAP,
            DELIVERY_TTL_SECONDS,
        ]
        with self._guard():
            reply = await self._record_attempt(keys=self._delivery_keys(delivery_id), args=args)
        return None if reply is None else _delivery_from_reply(reply[0], reply[1])

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        with self._guard():
            (found,) = await self._fetch_deliveries([delivery_id.encode()])
        return found

    async def list_deliveries(self, caller_id: str, limit: int = 50) -> list[Delivery]:
        if limit <= 0:
            return []
        index = self._key("dlvs", caller_id)
        with self._guard():
            ids = cast(list[bytes], await self._redis.zrevrange(index, 0, limit - 1))
            if not ids:
                return []
            deliveries = await self._fetch_deliveries(ids)
            stale = [raw_id for raw_id, found in zip(ids, deliveries, strict=True) if found is None]
            if stale:
                await self._redis.zrem(index, *stale)
        return [found for found in deliveries if found is not None]

    async def redeliver(self, delivery_id: str, now: float) -> Delivery | None:
        args: list[EncodableT] = [delivery_id, repr(float(now)), DELIVERY_TTL_SECONDS]
        with self._guard():
            reply = await self._redeliver(keys=self._delivery_keys(delivery_id), args=args)
        return None if reply is None else _delivery_from_reply(reply[0], reply[1])

    async def outbox_depth(self) -> int:
        due, leased = self._outbox_keys()
        with self._guard():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zcard(due)
                pipe.zcard(leased)
                due_count, leased_count = await pipe.execute()
        return int(due_count) + int(leased_count)
