"""The store's contract: records, states, and the `Store` interface both backends implement.

Everything the gateway must agree on across replicas lives behind this interface: request
ownership, in-flight slots, daily spend and idempotency keys. A later addition (webhook events,
a delivery outbox) is new abstract methods here, a new migration in `sqlite.py`, and new keys in
`redis.py`; nothing already here has to change.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Self

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})

# Non-terminal states in the order fal moves through them. `set_state` only moves forward, so a
# late poll saying IN_QUEUE cannot undo an IN_PROGRESS a webhook already reported.
PROGRESS_ORDER: dict[str, int] = {"IN_QUEUE": 0, "IN_PROGRESS": 1}

# Retention, shared so both backends forget at the same pace.
REQUEST_TTL_SECONDS = 7 * 86400
REQUEST_INDEX_CAP = 1000  # newest requests kept listable per caller
SPEND_TTL_SECONDS = 3 * 86400

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
    state: str  # "IN_QUEUE" | "IN_PROGRESS" | "COMPLETED" | "FAILED" | "CANCELLED"
    cost: float = 0.0  # the reserved budget estimate (USD)
    budget_day: str = ""  # "YYYY-MM-DD" (UTC) the cost was reserved against; "" = no budget
    slot: str = ""  # the in-flight slot token held by this request ("" = none)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What an idempotent replay answers with."""

    status_code: int
    headers: dict[str, str]
    body: bytes


def to_micros(amount: float) -> int:
    """USD -> integer micro-dollars; integers add up exactly where floats drift."""
    if not math.isfinite(amount) or amount < 0:
        raise ValueError(f"amount must be a finite, non-negative number of USD, got {amount!r}")
    return round(amount * _MICROS_PER_USD)


def from_micros(micros: int) -> float:
    return micros / _MICROS_PER_USD


def check_progress_state(state: str) -> None:
    if state not in PROGRESS_ORDER:
        # A terminal state through set_state would bypass finish_request's exactly-once hand-off,
        # and the slot/refund it guards would leak.
        raise ValueError(f"set_state takes one of {sorted(PROGRESS_ORDER)}, got {state!r}; use finish_request")


def check_terminal_state(state: str) -> None:
    if state not in TERMINAL_STATES:
        raise ValueError(f"finish_request takes one of {sorted(TERMINAL_STATES)}, got {state!r}")


def check_ttl(ttl: float) -> None:
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class Store(ABC):
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
    async def record_request(self, record: RequestRecord) -> None:
        """Inserts the record, replacing one with the same request_id."""

    @abstractmethod
    async def get_request(self, request_id: str) -> RequestRecord | None: ...

    @abstractmethod
    async def list_requests(self, caller_id: str, limit: int = 50) -> list[RequestRecord]:
        """The caller's requests, newest `created_at` first."""

    @abstractmethod
    async def set_state(self, request_id: str, state: str) -> RequestRecord | None:
        """Moves a non-terminal record forward (IN_QUEUE -> IN_PROGRESS).

        Never moves a record backward or out of a terminal state; then the record comes back
        unchanged. Returns None only if the request is unknown. `state` must be non-terminal.
        """

    @abstractmethod
    async def finish_request(self, request_id: str, state: str) -> RequestRecord | None:
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
