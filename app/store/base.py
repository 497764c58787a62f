"""The store's contract: records, states, and the `Store` interface both backends implement.

Everything the gateway must agree on across replicas lives behind this interface: request
ownership, in-flight slots, daily spend and idempotency keys, and for the webhook relay: fal's
completions, each request's event log, and the outbox of webhooks owed to callers' own servers.
Push devices have a contract of their own (`devices.py`), which `Store` extends.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

from app.store.devices import DeviceStore


class RequestState(StrEnum):
    """A request's state. The values are what both backends store and what `/v1/requests` answers;
    IN_QUEUE, IN_PROGRESS and COMPLETED are also fal's own status strings, so fal's JSON compares equal."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class DeliveryState(StrEnum):
    """A client-webhook delivery's state. The values are stored as they are, and written literally in
    the SQLite schema (the partial index on pending deliveries) and in the Redis Lua scripts."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up


TERMINAL_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELLED})

# Non-terminal states in the order fal moves through them. `set_state` only moves forward, so a
# late poll saying IN_QUEUE cannot undo an IN_PROGRESS a webhook already reported.
PROGRESS_ORDER: dict[RequestState, int] = {RequestState.IN_QUEUE: 0, RequestState.IN_PROGRESS: 1}

# Retention, shared so both backends forget at the same pace.
REQUEST_TTL_SECONDS = 7 * 86400
REQUEST_INDEX_CAP = 1000  # newest requests kept listable per caller
SPEND_TTL_SECONDS = 3 * 86400
COMPLETION_TTL_SECONDS = REQUEST_TTL_SECONDS  # as long as the request it completes
EVENT_TTL_SECONDS = 86400  # a request's event log lives a day past its last event
EVENT_CAP = 1000  # newest events kept per request (a chatty log stream must not grow without bound)
DELIVERY_TTL_SECONDS = 7 * 86400  # a delivery stays listable a week past its last change
DELIVERY_INDEX_CAP = 1000  # newest deliveries kept listable per caller
DELIVERY_HISTORY_CAP = 50  # newest attempts kept per delivery

COMPLETION_SOURCES = frozenset({"webhook", "stream", "poll"})
DELIVERY_STATES = frozenset(DeliveryState)  # `"pending" in DeliveryState` only works from Python 3.12

_MICROS_PER_USD = 1_000_000


class StoreUnavailable(Exception):
    """The backend cannot be reached (connection refused, timed out, database locked or unopenable)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    caller_id: str
    model_id: str
    app_id: str
    created_at: float  # unix seconds
    state: RequestState
    cost: float = 0.0  # the reserved budget estimate (USD)
    budget_day: str = ""  # "YYYY-MM-DD" (UTC) the cost was reserved against; "" = no budget
    slot: str = ""  # the in-flight slot token held by this request ("" = none)
    client_webhook: str = ""  # the caller's own fal_webhook URL ("" = none)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What an idempotent replay answers with."""

    status_code: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Completion:
    """fal's verified webhook, or the gateway's own observation that a request finished."""

    request_id: str
    ok: bool  # fal "status": "OK" -> True, "ERROR" -> False
    payload: dict | None  # the result body (fal's "payload")
    error: str | None
    received_at: float
    source: str  # "webhook" | "stream" | "poll"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a request's event log, as browsers and apps receive it."""

    seq: int  # 1, 2, 3 ... per request, strictly increasing, no gaps
    kind: str  # "status" | "logs" | "completed" | "error"
    data: dict
    at: float


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook owed to a caller's own server, retried until delivered or given up."""

    delivery_id: str  # uuid hex, also the Standard Webhooks "webhook-id" (stable across retries)
    request_id: str
    caller_id: str
    url: str
    body: bytes  # the exact JSON bytes to send (signed per attempt with a fresh timestamp)
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    created_at: float
    last_status: int | None = None
    last_error: str | None = None
    delivered_at: float | None = None
    history: tuple[dict, ...] = ()  # {"at", "status_code", "error", "duration_ms"}, newest last, capped


def to_micros(amount: float) -> int:
    """USD -> integer micro-dollars; integers add up exactly where floats drift."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount must be a finite, non-negative number of USD, got {amount!r}")
    return round(amount * _MICROS_PER_USD)


def from_micros(micros: int) -> float:
    return micros / _MICROS_PER_USD


def _values(states: Iterable[StrEnum]) -> list[str]:
    return sorted(str(state) for state in states)


def check_progress_state(state: RequestState) -> None:
    if state not in PROGRESS_ORDER:
        # A terminal state through set_state would bypass finish_request's exactly-once hand-off,
        # and the slot/refund it guards would leak.
        raise ValueError(f"set_state takes one of {_values(PROGRESS_ORDER)}, got {state!r}; use finish_request")


def check_terminal_state(state: RequestState) -> None:
    if state not in TERMINAL_STATES:
        raise ValueError(f"finish_request takes one of {_values(TERMINAL_STATES)}, got {state!r}")


def check_ttl(ttl: float) -> None:
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


def check_completion(completion: Completion) -> None:
    if completion.source not in COMPLETION_SOURCES:
        raise ValueError(f"completion source must be one of {sorted(COMPLETION_SOURCES)}, got {completion.source!r}")


def check_delivery(delivery: Delivery) -> None:
    if delivery.state not in DELIVERY_STATES:
        raise ValueError(f"delivery state must be one of {_values(DELIVERY_STATES)}, got {delivery.state!r}")
    if not delivery.delivery_id:
        raise ValueError("a delivery needs a delivery_id")
    if not isinstance(delivery.body, bytes):
        raise ValueError("a delivery's body must be the exact bytes to send")


def check_lease(lease_seconds: float) -> None:
    if not math.isfinite(lease_seconds) or lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}")


def attempt_entry(at: float, status_code: int | None, error: str | None, duration_ms: int) -> dict:
    """One `Delivery.history` entry; both backends build it here so they store the same shape."""
    return {"at": at, "status_code": status_code, "error": error, "duration_ms": int(duration_ms)}


class Store(DeviceStore, ABC):
    """Shared gateway state. Implementations: `SQLiteStore` (one host) and `RedisStore` (many replicas).

    Every method raises `StoreUnavailable` when the backend can't be reached, and `ValueError` for
    arguments that would corrupt the state (negative amounts, non-positive TTLs, wrong states).
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abstractmethod
    async def ping(self) -> None:
        """Raises StoreUnavailable if the backend is unreachable."""

    @abstractmethod
    async def close(self) -> None:
        """Releases connections; later calls raise StoreUnavailable."""

    # --- ownership ---

    @abstractmethod
    async def record_request(self, record: RequestRecord) -> Completion | None:
        """Inserts the record, replacing one with the same request_id.

        Returns the request's completion if one was already recorded: fal's webhook can arrive before
        the submit that started the job is recorded. Asked in the same call, a submit costs one round trip.
        """

    @abstractmethod
    async def get_request(self, request_id: str) -> RequestRecord | None: ...

    @abstractmethod
    async def list_requests(self, caller_id: str, limit: int = 50) -> list[RequestRecord]:
        """The caller's requests, newest `created_at` first."""

    @abstractmethod
    async def set_state(self, request_id: str, state: RequestState) -> RequestRecord | None:
        """Moves a non-terminal record forward (IN_QUEUE -> IN_PROGRESS).

        Never moves a record backward or out of a terminal state; then the record comes back
        unchanged. Returns None only if the request is unknown. `state` must be non-terminal.
        """

    @abstractmethod
    async def finish_request(self, request_id: str, state: RequestState) -> RequestRecord | None:
        """Atomically moves a non-terminal record to the terminal `state`.

        Returns the record (with its cost, slot and budget_day) only to the one call that made the
        transition, None to every other (unknown or already terminal), so whoever gets it releases
        the slot and refunds exactly once however many webhooks, polls and cancels race.
        """

    # --- in-flight slots ---

    @abstractmethod
    async def acquire_slot(self, caller_id: str, token: str, limit: int, ttl: float) -> bool:
        """Takes one of the caller's `limit` slots for `ttl` seconds.

        Re-acquiring a token already held succeeds and extends it without taking another slot.
        """

    @abstractmethod
    async def release_slot(self, caller_id: str, token: str) -> bool:
        """True only if the token was held (and not yet expired)."""

    @abstractmethod
    async def slots_in_use(self, caller_id: str) -> int: ...

    # --- budgets (USD in and out, integer micro-dollars inside) ---

    @abstractmethod
    async def reserve_budget(self, caller_id: str, day: str, amount: float, limit: float) -> tuple[bool, float]:
        """If spent + amount <= limit: adds it, returns (True, spent_after); else (False, spent_now)."""

    @abstractmethod
    async def refund_budget(self, caller_id: str, day: str, amount: float) -> float:
        """Subtracts `amount` (never below zero) and returns what is spent after."""

    @abstractmethod
    async def spent(self, caller_id: str, day: str) -> float: ...

    # --- idempotency (scoped per caller + key) ---

    @abstractmethod
    async def idempotency_begin(
        self, caller_id: str, key: str, fingerprint: str, ttl: float
    ) -> tuple[str, StoredResponse | None]:
        """Claims `key` for this caller, or reports why not.

        "new": claimed (a pending marker lives `ttl` seconds; a short ttl lets a crashed submit's
        claim lapse soon); "replay": same fingerprint, completed, with the stored response;
        "pending": same fingerprint, still in flight; "conflict": the key was used for another body.
        """

    @abstractmethod
    async def idempotency_complete(self, caller_id: str, key: str, response: StoredResponse, ttl: float) -> None:
        """Stores the response for replays for `ttl` seconds. No-op if the claim is gone (expired/aborted)."""

    @abstractmethod
    async def idempotency_abort(self, caller_id: str, key: str) -> None:
        """Drops a pending claim (the submit failed before fal accepted it); completed keys stay."""

    # --- webhook relay: completions and events ---

    @abstractmethod
    async def put_completion(self, completion: Completion) -> bool:
        """First write wins: True if this call stored it, False if the request already had one
        (fal retried the webhook, or a poll or stream saw the end first)."""

    @abstractmethod
    async def get_completion(self, request_id: str) -> Completion | None: ...

    @abstractmethod
    async def append_event(self, request_id: str, kind: str, data: dict, *, terminal: bool = False) -> Event | None:
        """Appends with the next seq, atomically across replicas.

        A terminal event ("completed"/"error") closes the log: once one exists, every later append,
        terminal or not, returns None. So it appears at most once, and it is always the last event,
        which is what lets consumers stop at it. The newest EVENT_CAP events are kept (the terminal
        one, being the newest, is never dropped), for EVENT_TTL_SECONDS after the last append.
        """

    @abstractmethod
    async def events_after(self, request_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        """Events with seq > after_seq, oldest first."""

    @abstractmethod
    async def has_terminal_event(self, request_id: str) -> bool: ...

    @abstractmethod
    async def pending_requests(self, older_than: float, limit: int = 100, newer_than: float = 0.0) -> list[RequestRecord]:
        """Non-terminal requests created before `older_than` and after `newer_than` (unix time), oldest
        first: the fallback poller's work list for webhooks that never came (`newer_than` is its cursor,
        so it goes round all of them rather than always the oldest)."""

    # --- webhook relay: the outbox of client webhooks ---

    @abstractmethod
    async def enqueue_delivery(self, delivery: Delivery) -> bool:
        """Stores it; idempotent on delivery_id (False if it existed, which stays unchanged)."""

    @abstractmethod
    async def claim_deliveries(self, now: float, lease_seconds: float, limit: int = 10) -> list[Delivery]:
        """Atomically leases up to `limit` pending deliveries due at `now` (oldest due first) until
        now + lease_seconds. Concurrent claimers, on any replica, never get the same delivery; one
        whose lease lapsed (its claimer died) can be claimed again."""

    @abstractmethod
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
        """Logs an attempt (attempts += 1, history) and frees the lease.

        ok -> "delivered" for good; not ok -> "pending" again at `next_attempt_at`, or "failed" when
        that is None. A delivery already delivered stays delivered (a late report from a claimer
        whose lease lapsed can't undo it). None if the delivery is unknown.
        """

    @abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None: ...

    @abstractmethod
    async def list_deliveries(self, caller_id: str, limit: int = 50) -> list[Delivery]:
        """The caller's deliveries, newest `created_at` first."""

    @abstractmethod
    async def redeliver(self, delivery_id: str, now: float) -> Delivery | None:
        """The caller asked for a re-send: back to "pending", due at `now`, whatever its state.

        A lease in force is kept, so a re-send never runs alongside an attempt in flight.
        """

    @abstractmethod
    async def outbox_depth(self) -> int:
        """How many deliveries are pending (due, waiting for a retry, or in flight)."""
