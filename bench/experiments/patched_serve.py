"""Start falgate with in-memory patches, to size possible changes to its hot path (bench experiments only).

The app's files are not changed: the patches are applied in this process before `falgate serve` starts.
Select them with BENCH_PATCHES (comma list):

  no-store          a submit's two store calls (acquire_slot, record_request) answered without the store:
                    what the submit path costs without SQLite (slots and ownership are NOT recorded, so
                    only for measuring: status polls of such requests answer 404)
  inline-store      run each SQLite call on the event loop thread instead of the store's worker thread
                    (measured slower: a WAL checkpoint's fsync then stalls the loop)
  no-proxy-headers  start uvicorn without ProxyHeadersMiddleware (it checks trusted IPs per request)

    BENCH_GATEWAY_CMD=".venv/bin/python bench/experiments/patched_serve.py" \
    BENCH_FALGATE_ENV="BENCH_PATCHES=no-store" bash bench/run.sh --targets falgate-queue --paths submit

Earlier patches (httpx -> aiohttp, an async Gateway dependency, an O(1) slot count) became the app's
own code; bench/README.md has what they measured.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PATCHES = {p.strip() for p in os.environ.get("BENCH_PATCHES", "").split(",") if p.strip()}


def patch_no_store() -> None:
    from app.store.sqlite import SQLiteStore

    async def acquire_slot(self, caller_id, token, limit, ttl):
        return True

    async def record_request(self, record):
        return None

    SQLiteStore.acquire_slot = acquire_slot
    SQLiteStore.record_request = record_request


def patch_inline_store() -> None:
    import sqlite3

    from app.store import sqlite as store_module

    original_open = store_module._open

    def open_anywhere(path):
        # The connection is then used from the loop thread, not the one that opened it.
        real_connect = sqlite3.connect
        sqlite3.connect = lambda *a, **k: real_connect(*a, **{**k, "check_same_thread": False})
        try:
            return original_open(path)
        finally:
            sqlite3.connect = real_connect

    async def submit_inline(self, op, write):
        return self._run(op, write)

    store_module._open = open_anywhere
    store_module.SQLiteStore._submit = submit_inline


def patch_no_proxy_headers() -> None:
    import uvicorn

    original_run = uvicorn.run

    def run(*args, **kwargs):
        kwargs["proxy_headers"] = False
        return original_run(*args, **kwargs)

    uvicorn.run = run


_PATCHES = {"no-store": patch_no_store, "inline-store": patch_inline_store, "no-proxy-headers": patch_no_proxy_headers}
unknown = PATCHES - set(_PATCHES)
if unknown:
    raise SystemExit(f"bench patched_serve: unknown patches {sorted(unknown)}; known: {sorted(_PATCHES)}")
for name in sorted(PATCHES):
    _PATCHES[name]()
print(f"bench patched_serve: patches {sorted(PATCHES) or 'none'}", flush=True)

from app.cli import main  # noqa: E402  (after the patches)

main(["serve"])
