"""What one Python process can do on one core: a bare proxy with none of falgate's features.

It serves the fal-js proxy protocol on /api/fal/proxy (GET status, POST submit) and forwards to the
upstream with one shared aiohttp session, rewriting nothing and validating nothing beyond the host.
It is a ceiling for falgate's design choices, not a gateway: no auth, limits, validation or records.

    .venv/bin/python bench/experiments/ceiling.py --server uvicorn   # raw ASGI app on uvicorn + uvloop + httptools
    .venv/bin/python bench/experiments/ceiling.py --server aiohttp   # aiohttp.web server

Env as for falgate: FALGATE_PORT, FALGATE_FAL_QUEUE_URL, FAL_KEY. Serves GET /healthz.
Run it through the harness with:
    BENCH_GATEWAY_CMD=".venv/bin/python bench/experiments/ceiling.py --server uvicorn" \
        bash bench/run.sh --targets falgate-proxy
"""

from __future__ import annotations

import argparse
import os
from urllib.parse import urlsplit

import aiohttp

UPSTREAM = os.environ.get("FALGATE_FAL_QUEUE_URL", "http://127.0.0.1:8701").rstrip("/")
AUTH = f"Key {os.environ.get('FAL_KEY', 'bench')}"
PORT = int(os.environ.get("FALGATE_PORT", "8702"))
PROXY_PATH = "/api/fal/proxy"
_session: aiohttp.ClientSession | None = None


def session() -> aiohttp.ClientSession:
    global _session
    if _session is None:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, limit_per_host=200), auto_decompress=False
        )
    return _session


def upstream_url(target: str | None) -> str | None:
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme != "https" or parts.hostname != "queue.fal.run":
        return None
    return UPSTREAM + parts.path + (f"?{parts.query}" if parts.query else "")


async def forward(method: str, url: str, body: bytes | None) -> tuple[int, bytes, str | None]:
    headers = {"authorization": AUTH, "accept": "application/json"}
    if body is not None:
        headers["content-type"] = "application/json"
    async with session().request(method, url, headers=headers, data=body) as r:
        return r.status, await r.read(), r.headers.get("x-fal-request-id")


# ------------------------------------------------------------------------------------------ raw ASGI
async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if _session is not None:
                    await _session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/healthz":
        return await _asgi_reply(send, 200, b'{"ok":true}', None)
    if path != PROXY_PATH:
        return await _asgi_reply(send, 404, b'{"detail":"Not Found"}', None)
    target = None
    for k, v in scope["headers"]:
        if k == b"x-fal-target-url":
            target = v.decode("latin-1")
    url = upstream_url(target)
    if url is None:
        return await _asgi_reply(send, 400, b'{"detail":"Invalid request"}', None)
    body = None
    if scope["method"] != "GET":
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
    status, content, rid = await forward(scope["method"], url, body)
    await _asgi_reply(send, status, content, rid)


async def _asgi_reply(send, status: int, body: bytes, rid: str | None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if rid:
        headers.append((b"x-fal-request-id", rid.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------------ aiohttp.web
def aiohttp_app():
    from aiohttp import web

    async def proxy(request: web.Request) -> web.Response:
        url = upstream_url(request.headers.get("x-fal-target-url"))
        if url is None:
            return web.json_response({"detail": "Invalid request"}, status=400)
        body = await request.read() if request.method != "GET" else None
        status, content, rid = await forward(request.method, url, body)
        headers = {"x-fal-request-id": rid} if rid else None
        return web.Response(status=status, body=content, content_type="application/json", headers=headers)

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def close(_app) -> None:
        if _session is not None:
            await _session.close()

    app = web.Application()
    app.router.add_route("*", PROXY_PATH, proxy)
    app.router.add_get("/healthz", health)
    app.on_cleanup.append(close)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=["uvicorn", "aiohttp"], default="uvicorn")
    args = ap.parse_args()
    if args.server == "uvicorn":
        import uvicorn

        uvicorn.run(asgi_app, host="127.0.0.1", port=PORT, log_level="warning", access_log=False,
                    loop="uvloop", http="httptools", lifespan="on")
    else:
        import uvloop
        from aiohttp import web

        uvloop.install()
        web.run_app(aiohttp_app(), host="127.0.0.1", port=PORT, access_log=None, print=None)


if __name__ == "__main__":
    main()
