"""One upstream status-stream watcher per request, however many clients watch, on however many replicas.

A replica watches a request only while it holds that request's lease, so a thousand SSE clients spread
over three replicas still cost fal one status stream. What the watcher sees becomes events in the
store (durable, resumable by sequence number) and on the bus (live, on every replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from app.callers.ledger import Ledger
from app.errors import GatewayError
from app.fal.upstream import UpstreamClient
from app.ops.metrics import Metrics
from app.pipeline.operations import FrontDoor, Operation, OpKind
from app.pipeline.rewrite import iter_sse_data
from app.relay.completions import Completions
from app.relay.leases import Leases
from app.store import RequestState, Store

log = logging.getLogger("falgate.watchers")

_LEASE_SECONDS = 30.0


class Watchers:
    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        leases: Leases,
        ledger: Ledger,
        completions: Completions,
        metrics: Metrics,
        *,
        lease_seconds: float = _LEASE_SECONDS,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._leases = leases
        self._ledger = ledger
        self._completions = completions
        self._metrics = metrics
        self._lease_seconds = lease_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.replica = uuid.uuid4().hex

    def ensure(self, request_id: str, app_id: str) -> None:
        """Make sure someone watches this request's fal status stream (cheap to call repeatedly)."""
        if request_id in self._tasks:
            return
        task = asyncio.create_task(self._watch(request_id, app_id), name=f"watch:{request_id}")
        self._tasks[request_id] = task
        self._metrics.upstream_watchers.set(len(self._tasks))
        task.add_done_callback(lambda _: self._done(request_id))

    def _done(self, request_id: str) -> None:
        self._tasks.pop(request_id, None)
        self._metrics.upstream_watchers.set(len(self._tasks))

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(BaseException):
                await task

    async def _watch(self, request_id: str, app_id: str) -> None:
        lease = f"watch:{request_id}"
        if await self._store.has_terminal_event(request_id):
            return
        if not await self._leases.acquire(lease, self.replica, self._lease_seconds):
            return  # another replica watches it; its events reach our clients over the bus
        follow = asyncio.create_task(self._follow(request_id, app_id))
        renew = asyncio.create_task(self._renew(lease))
        try:
            await asyncio.wait({follow, renew}, return_when=asyncio.FIRST_COMPLETED)
            if follow.done():
                follow.result()  # its errors, to the handlers below
            else:
                log.info("status watcher lost its lease", extra={"fields": {"request_id": request_id}})
        except GatewayError as exc:
            log.info("status watcher stopped", extra={"fields": {"request_id": request_id, "reason": type(exc).__name__}})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("status watcher failed", extra={"fields": {"request_id": request_id}})
        finally:
            for task in (renew, follow):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await self._leases.release(lease, self.replica)

    async def _renew(self, lease: str) -> None:
        """Renew on a timer, not on fal's events: a quiet job (no event for longer than the lease) must not
        let another replica open a second upstream stream. Returns when the lease was lost (we stop)."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                held = await self._leases.acquire(lease, self.replica, self._lease_seconds)
            except Exception:
                continue  # the store is briefly away: keep watching, try again
            if not held:
                return

    async def _follow(self, request_id: str, app_id: str) -> None:
        logs_seen = sum(len(e.data.get("logs", [])) for e in await self._store.events_after(request_id) if e.kind == "logs")
        last_status: tuple | None = None
        op = Operation(OpKind.STREAM, FrontDoor.REST, app_id, request_id=request_id, params={"logs": "1"})
        upstream = await self._upstream.send(op, {}, stream=True)
        try:
            if upstream.status_code != 200:
                return
            async for status in iter_sse_data(upstream):
                state = status.get("status")
                logs = status.get("logs") or []
                if isinstance(logs, list) and len(logs) > logs_seen:
                    await self._completions.publish(request_id, "logs", {"logs": logs[logs_seen:]})
                    logs_seen = len(logs)
                current = (state, status.get("queue_position"))
                if current != last_status and state != RequestState.COMPLETED:
                    last_status = current
                    await self._completions.publish(request_id, "status", _status_view(status))
                    await self._ledger.progress(request_id, str(state))
                if state == RequestState.COMPLETED:
                    await self._completions.from_upstream(request_id, app_id, source="stream")
                    return
        finally:
            await upstream.aclose()


def _status_view(status: dict) -> dict:
    """A status event without the URLs (which point upstream) and without logs (sent as their own events)."""
    return {k: v for k, v in status.items() if k in ("status", "queue_position", "request_id")}
