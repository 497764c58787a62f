"""`Idempotency-Key` on submits: a retried submit gets the first answer instead of a second job.

Scoped per caller and key; the body is fingerprinted canonically (key order and whitespace do not
matter), so the same key with a different body or model is refused with 422 rather than replayed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import orjson
from starlette.responses import Response

from app.errors import BadRequest, GatewayError, InvalidInput
from app.pipeline.operations import Operation
from app.store import Store, StoredResponse

HEADER = "idempotency-key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class IdempotencyInProgress(GatewayError):
    status_code = 409


def fingerprint(op: Operation, payload: object) -> str:
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(f"{op.kind}\n{op.model_id}\n".encode() + canonical).hexdigest()


def key_from(headers: Mapping[str, str]) -> str | None:
    key = headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.match(key):
        raise BadRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


class Idempotency:
    def __init__(self, store: Store, ttl: float, pending_ttl: float) -> None:
        self._store = store
        self._ttl = ttl
        # A claim whose submit crashed must not block the key for a day: it lapses after one upstream timeout.
        self._pending_ttl = pending_ttl

    async def begin(self, caller_id: str, key: str, op: Operation, payload: object) -> Response | None:
        """None when this submit should proceed; the stored first answer when it is a replay."""
        state, stored = await self._store.idempotency_begin(caller_id, key, fingerprint(op, payload), self._pending_ttl)
        if state == "replay" and stored is not None:
            return Response(stored.body, stored.status_code, headers={**stored.headers, "idempotent-replayed": "true"})
        if state == "pending":
            raise IdempotencyInProgress(
                "A submit with this Idempotency-Key is still in progress", headers={"retry-after": "1"}
            )
        if state == "conflict":
            raise InvalidInput(
                [
                    {
                        "loc": ["header", "idempotency-key"],
                        "msg": "This Idempotency-Key was used with a different request body",
                        "type": "idempotency_key_reused",
                    }
                ]
            )
        return None

    async def complete(self, caller_id: str, key: str, response: Response) -> None:
        headers = {k: v for k, v in response.headers.items() if k != "content-length"}
        stored = StoredResponse(response.status_code, headers, bytes(response.body))
        await self._store.idempotency_complete(caller_id, key, stored, self._ttl)

    async def abort(self, caller_id: str, key: str) -> None:
        await self._store.idempotency_abort(caller_id, key)
