"""Who owns each request, and what each caller may still spend: ownership, in-flight slots, budgets.

Every transition that frees something (a slot, a reserved budget) goes through the store's atomic
`finish_request`, so a webhook, a status poll and a cancel racing on different replicas release and
refund exactly once.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from app.callers.authenticator import Caller
from app.catalog.spec import estimate_cost, unit_price
from app.errors import NotFound, PaymentRequired, TooManyRequests
from app.pipeline.operations import SPENDING_KINDS, Operation
from app.settings import Settings
from app.store import PROGRESS_ORDER, TERMINAL_STATES, Completion, RequestRecord, RequestState, Store

log = logging.getLogger("falgate.ledger")

_CACHE_SIZE = 100_000


class _LRU(OrderedDict[str, object]):
    """A bounded map, oldest entries dropped first."""

    def put(self, key: str, value: object) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > _CACHE_SIZE:
            self.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Admission:
    """What a submit holds between passing the checks and fal's answer."""

    caller_id: str
    cost: float
    budget_day: str
    slot: str


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class Ledger:
    def __init__(self, store: Store, settings: Settings, prices: Mapping[str, float]) -> None:
        self._store = store
        self._settings = settings
        self._prices = prices
        # Who owns a request never changes once recorded, so every replica may cache it: status polls,
        # the hot path, then cost no store round trip.
        self._owners = _LRU()
        self._states = _LRU()  # the progress state this replica last wrote, to skip identical writes
        # Slot tokens only need to be unique among replicas sharing a store: a random per-process prefix
        # and a counter, rather than a uuid4 per submit (os.urandom and UUID's checks on the hot path).
        self._slot_prefix = secrets.token_hex(8)
        self._slot_numbers = itertools.count()

    async def owned(self, caller: Caller, request_id: str, app_id: str | None = None) -> str:
        """The app id of a request this caller owns (under `app_id`, when given); anyone else gets the
        same 404 as an unknown id."""
        owner = self._owners.get(request_id)
        if owner is None:
            record = await self._store.get_request(request_id)
            if record is not None:
                owner = (record.caller_id, record.app_id)
                self._owners.put(request_id, owner)
        if not isinstance(owner, tuple) or owner[0] != caller.id or app_id not in (None, owner[1]):
            raise NotFound("Request not found")
        return owner[1]

    async def admit(self, caller: Caller, op: Operation, payload: Mapping) -> Admission:
        """Reserve the cost estimate and an in-flight slot, or refuse with 402 / 429 before fal is called."""
        assert op.model is not None
        cost = estimate_cost(op.model, payload, self._prices)
        day = ""
        budget = self._settings.budget_per_day
        if budget is not None:
            day = today()
            ok, spent = await self._store.reserve_budget(caller.id, day, cost, budget)
            if not ok:
                raise PaymentRequired(
                    "Daily budget exhausted",
                    budget={"per_day": budget, "spent": round(spent, 6), "remaining": round(max(0.0, budget - spent), 6)},
                    estimated_cost=cost,
                )
        slot = ""
        # A sync run holds an upstream connection for as long as fal takes (up to the upstream timeout):
        # it counts against the in-flight cap like a queued job.
        if op.kind in SPENDING_KINDS:
            slot = f"{self._slot_prefix}{next(self._slot_numbers):x}"
            limit = self._settings.max_inflight
            if not await self._store.acquire_slot(caller.id, slot, limit, self._settings.inflight_ttl_seconds):
                if day:
                    await self._store.refund_budget(caller.id, day, cost)
                raise TooManyRequests(
                    f"Too many unfinished requests: at most {limit} at a time",
                    headers={"retry-after": "5", "ratelimit-policy": f'"inflight";q={limit}', "ratelimit": '"inflight";r=0'},
                    limit="inflight",
                )
        return Admission(caller.id, cost, day, slot)

    async def quote(self, caller: Caller, op: Operation, payload: Mapping) -> dict:
        """What `admit` would reserve for this body, and what the caller has left today; nothing held."""
        assert op.model is not None
        spec = op.model
        budget = self._settings.budget_per_day
        remaining = None
        if budget is not None:
            remaining = round(max(0.0, budget - await self._store.spent(caller.id, today())), 6)
        return {
            "model_id": spec.model_id,
            "units": spec.billing.units(payload),
            "unit": spec.billing.unit,
            "unit_price": unit_price(spec, self._prices),
            "cost": estimate_cost(spec, payload, self._prices),  # the very figure admit reserves
            "currency": "USD",
            "remaining": remaining,
        }

    async def commit(
        self, admission: Admission, op: Operation, request_id: str, client_webhook: str = ""
    ) -> Completion | None:
        """Record the request as the caller's; returns fal's completion if its webhook came first."""
        assert op.model is not None
        self._owners.put(request_id, (admission.caller_id, op.app_id))
        return await self._store.record_request(
            RequestRecord(
                request_id=request_id,
                caller_id=admission.caller_id,
                model_id=op.model.model_id,
                app_id=op.app_id,
                created_at=time.time(),
                state=RequestState.IN_QUEUE,
                cost=admission.cost,
                budget_day=admission.budget_day,
                slot=admission.slot,
                client_webhook=client_webhook,
            )
        )

    async def abandon(self, admission: Admission, *, refund: bool = True) -> None:
        """fal did not take the job (or it was a sync run that is over): give back what was held."""
        if admission.slot:
            await self._store.release_slot(admission.caller_id, admission.slot)
        if refund and admission.budget_day:
            await self._store.refund_budget(admission.caller_id, admission.budget_day, admission.cost)

    async def progress(self, request_id: str, status: str) -> None:
        """fal says the request is at `status` (its own string); only IN_QUEUE and IN_PROGRESS move it."""
        if status not in PROGRESS_ORDER or self._states.get(request_id) == status:
            return
        state = RequestState(status)
        self._states.put(request_id, state)
        await self._store.set_state(request_id, state)

    async def finish(self, request_id: str, state: RequestState) -> None:
        """Move a request to a terminal state; only the call that made the move frees its slot and refunds."""
        assert state in TERMINAL_STATES
        record = await self._store.finish_request(request_id, state)
        if record is None:
            return
        if record.slot:
            await self._store.release_slot(record.caller_id, record.slot)
        if state != RequestState.COMPLETED and record.budget_day and record.cost:
            await self._store.refund_budget(record.caller_id, record.budget_day, record.cost)
        log.info("request finished", extra={"fields": {"request_id": request_id, "state": state}})

    async def usage(self, caller: Caller) -> dict:
        day = today()
        spent = await self._store.spent(caller.id, day)
        budget = self._settings.budget_per_day
        return {
            "caller_id": caller.id,
            "day": day,
            "spent": round(spent, 6),
            "budget_per_day": budget,
            "remaining": None if budget is None else round(max(0.0, budget - spent), 6),
            "inflight": await self._store.slots_in_use(caller.id),
            "max_inflight": self._settings.max_inflight,
            "currency": "USD",
        }
