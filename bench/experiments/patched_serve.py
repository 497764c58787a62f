"""Start falgate with in-memory patches, to size possible fixes to its hot path (bench experiments only).

The app's files are not changed: the patches are applied in this process before `falgate serve` starts.
Select them with BENCH_PATCHES (comma list):

  async-dep   make the `Gateway` dependency an `async def` (FastAPI runs a plain `def` dependency in a
              worker thread: one thread hop per request)
  aiohttp     send non-streaming upstream calls with aiohttp directly instead of httpx + AiohttpTransport
  no-proxy-headers  start uvicorn without ProxyHeadersMiddleware (it parses trusted IPs per request)
  no-slot-scan      in-flight slots without the per-submit DELETE + COUNT(*) over all the caller's slots
              (what an O(1) in-flight counter would cost: only the INSERT remains; the cap is not enforced)
  request-cache     keep the SQLite store's request records in a per-process dict: `get_request` is
              answered from it, and `set_state` skips the write transaction when the state does not move
              forward (every IN_PROGRESS poll otherwise runs BEGIN IMMEDIATE ... COMMIT)

    BENCH_GATEWAY_CMD=".venv/bin/python bench/experiments/patched_serve.py" \
    BENCH_FALGATE_ENV="BENCH_PATCHES=async-dep,aiohttp" bash bench/run.sh --targets falgate-proxy
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fastapi import (
    Request,  # module level: the patched dependency's annotation is resolved from these globals
)

PATCHES = {p.strip() for p in os.environ.get("BENCH_PATCHES", "").split(",") if p.strip()}


def patch_async_dep() -> None:
    from app import state

    async def _gateway(request: Request):  # same body as app.state._gateway, as a coroutine
        return request.app.state.gateway

    dep = state.GatewayDep.__metadata__[0]
    object.__setattr__(dep, "dependency", _gateway)


def patch_aiohttp() -> None:
    import aiohttp
    import httpx

    from app import upstream

    original_send = upstream.UpstreamClient.send

    async def send(self, op, caller_headers, body=None, *, stream=False):
        if stream:
            return await original_send(self, op, caller_headers, body, stream=stream)
        session = getattr(self, "_bench_session", None)
        if session is None:
            limit = self._settings.upstream_max_connections
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                timeout=aiohttp.ClientTimeout(total=self._settings.upstream_timeout),
                auto_decompress=False,
            )
            self._bench_session = session
        call = self.plan(op)
        try:
            async with session.request(
                call.method,
                call.url,
                params=call.params or None,
                headers=self.headers(caller_headers, body is not None),
                data=body,
                allow_redirects=False,
            ) as r:
                content = await r.read()
                return httpx.Response(r.status, headers=r.raw_headers, content=content)
        except aiohttp.ClientError as exc:
            raise upstream.UpstreamUnavailable("Could not reach fal", error_type="upstream_unavailable") from exc

    upstream.UpstreamClient.send = send


def patch_no_proxy_headers() -> None:
    import uvicorn

    original_run = uvicorn.run

    def run(*args, **kwargs):
        kwargs["proxy_headers"] = False
        return original_run(*args, **kwargs)

    uvicorn.run = run


def patch_request_cache() -> None:
    from app.store import sqlite as sq
    from app.store.base import PROGRESS_ORDER as order

    cache: dict = {}
    orig_record, orig_get, orig_set = sq.SQLiteStore.record_request, sq.SQLiteStore.get_request, sq.SQLiteStore.set_state

    async def record_request(self, record):
        await orig_record(self, record)
        cache[record.request_id] = record

    async def get_request(self, request_id):
        rec = cache.get(request_id)
        if rec is None:
            rec = await orig_get(self, request_id)
            if rec is not None:
                cache[request_id] = rec
        return rec

    async def set_state(self, request_id, state):
        rec = cache.get(request_id)
        if rec is not None:
            current = order.get(rec.state)
            if current is None or order[state] <= current:
                return rec
        rec = await orig_set(self, request_id, state)
        if rec is not None:
            cache[request_id] = rec
        return rec

    sq.SQLiteStore.record_request = record_request
    sq.SQLiteStore.get_request = get_request
    sq.SQLiteStore.set_state = set_state


def patch_no_slot_scan() -> None:
    import time

    from app.store import sqlite as sq

    async def acquire_slot(self, caller_id, token, limit, ttl):
        async def op(db):
            await db.execute(
                "INSERT OR REPLACE INTO slots (caller_id, token, expires_at) VALUES (?, ?, ?)",
                (caller_id, token, time.time() + ttl),
            )
            return True

        return await self._write(op)

    sq.SQLiteStore.acquire_slot = acquire_slot


if "async-dep" in PATCHES:
    patch_async_dep()
if "no-slot-scan" in PATCHES:
    patch_no_slot_scan()
if "aiohttp" in PATCHES:
    patch_aiohttp()
if "no-proxy-headers" in PATCHES:
    patch_no_proxy_headers()
if "request-cache" in PATCHES:
    patch_request_cache()
print(f"bench patched_serve: patches {sorted(PATCHES) or 'none'}", flush=True)

from app.cli import main  # after the patches

main(["serve"])
