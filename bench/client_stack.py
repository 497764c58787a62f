"""Measure the upstream HTTP client stacks the gateway could use, on one core, against the fast upstream.

Fires a fixed number of GETs (a fal status poll, ~400-byte JSON answer) with a fixed number in flight
at the fake fal upstream (bench/upstream/server.mjs) through:

  httpx            httpx.AsyncClient with its default transport (httpcore)
  httpx-pyreqwest  httpx.AsyncClient on pyreqwest's own transport (pyreqwest.compatibility.httpx.HttpxTransport):
                   httpx's request/response layer over pyreqwest's connections, so the difference to
                   `pyreqwest` is what httpx's own layer costs
  pyreqwest        pyreqwest directly (Rust's reqwest and hyper; what app/fal/upstream.py uses)
  httpx-aiohttp    httpx.AsyncClient with httpx_aiohttp.AiohttpTransport (optional: the bench extra)
  aiohttp          aiohttp.ClientSession directly (optional: the app no longer needs aiohttp; it comes
                   with the bench extra, through httpx-aiohttp, as a comparison)
  aiosonic         a pure-Python asyncio client that advertises speed (optional: the bench extra)

and prints requests/s, p50 and p99 for each. A stack whose package is not installed is skipped with a
note (the first three need only the app's own dependencies). Each client reads and JSON-decodes the body,
as a proxy that rewrites URLs would. This script pins itself to one core and the upstream to the other
(when the machine has two), so the figure is what one gateway process could get out of the client.

    .venv/bin/python bench/client_stack.py                 # starts its own upstream, every installed stack
    .venv/bin/python bench/client_stack.py --stacks httpx,httpx-pyreqwest,pyreqwest --repeat 2
    .venv/bin/python bench/client_stack.py --url http://127.0.0.1:8701 --concurrency 32 --requests 20000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STATUS_PATH = "/fal-ai/kling-video/requests/0123456789abcdef/status?logs=1"
HEADERS = {"Authorization": "Key bench-key:bench-secret", "Accept": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


async def drive(label: str, fetch, total: int, concurrency: int) -> dict:
    """Run `total` calls of `fetch()` with `concurrency` workers; return rps and latency percentiles."""
    latencies: list[float] = []
    remaining = total
    errors = 0

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            try:
                await fetch()
            except Exception as exc:  # noqa: BLE001 - counted, reported once
                errors += 1
                if errors == 1:
                    print(f"  {label}: first error: {exc!r}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "stack": label,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


async def bench_httpx_default(url: str, total: int, conc: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def fetch() -> None:
            r = await client.get(STATUS_PATH, headers=HEADERS)
            r.json()
            assert r.status_code == 202, r.status_code

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("httpx (default transport)", fetch, total, conc)


async def bench_httpx_pyreqwest(url: str, total: int, conc: int) -> dict:
    import httpx
    from pyreqwest.client import ClientBuilder
    from pyreqwest.compatibility.httpx import HttpxTransport

    # The transport closes the pyreqwest client it was given when httpx closes the transport.
    transport = HttpxTransport(ClientBuilder().max_connections(conc).build())
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30) as client:

        async def fetch() -> None:
            r = await client.get(STATUS_PATH, headers=HEADERS)
            r.json()
            assert r.status_code == 202, r.status_code

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("httpx + pyreqwest HttpxTransport", fetch, total, conc)


async def bench_httpx_aiohttp(url: str, total: int, conc: int) -> dict:
    import aiohttp
    import httpx
    from httpx_aiohttp import AiohttpTransport

    transport = AiohttpTransport(
        client=lambda: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc, limit_per_host=conc))
    )
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=30) as client:

        async def fetch() -> None:
            r = await client.get(STATUS_PATH, headers=HEADERS)
            r.json()
            assert r.status_code == 202, r.status_code

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("httpx + httpx_aiohttp.AiohttpTransport", fetch, total, conc)


async def bench_aiohttp(url: str, total: int, conc: int) -> dict:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:

        async def fetch() -> None:
            async with session.get(STATUS_PATH, headers=HEADERS) as r:
                body = await r.read()
                json.loads(body)
                assert r.status == 202, r.status

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("aiohttp (raw)", fetch, total, conc)


async def bench_pyreqwest(url: str, total: int, conc: int) -> dict:
    from pyreqwest.client import ClientBuilder

    async with ClientBuilder().base_url(url).max_connections(conc).build() as client:

        async def fetch() -> None:
            r = await client.get(STATUS_PATH).headers(HEADERS).build().send()
            body = bytes(await r.bytes())
            json.loads(body)
            assert r.status == 202, r.status

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("pyreqwest (Rust reqwest)", fetch, total, conc)


async def bench_aiosonic(url: str, total: int, conc: int) -> dict:
    import aiosonic

    connector = aiosonic.TCPConnector(pool_configs={":default": {"size": conc}})
    client = aiosonic.HTTPClient(connector=connector)
    try:

        async def fetch() -> None:
            r = await client.get(url + STATUS_PATH, headers=HEADERS)
            body = await r.content()
            json.loads(body)
            assert r.status_code == 202, r.status_code

        await drive("warmup", fetch, min(total // 10, 2000), conc)
        return await drive("aiosonic", fetch, total, conc)
    finally:
        await client.connector.cleanup()


STACKS = {
    "httpx": bench_httpx_default,
    "httpx-pyreqwest": bench_httpx_pyreqwest,
    "pyreqwest": bench_pyreqwest,
    "httpx-aiohttp": bench_httpx_aiohttp,
    "aiohttp": bench_aiohttp,
    "aiosonic": bench_aiosonic,
}
# The modules each stack imports: a stack whose modules are missing is skipped, not an error.
NEEDS = {
    "httpx": ["httpx"],
    "httpx-pyreqwest": ["httpx", "pyreqwest"],
    "pyreqwest": ["pyreqwest"],
    "httpx-aiohttp": ["httpx", "httpx_aiohttp", "aiohttp"],
    "aiohttp": ["aiohttp"],
    "aiosonic": ["aiosonic"],
}


def missing_modules(stack: str) -> list[str]:
    return [m for m in NEEDS[stack] if importlib.util.find_spec(m) is None]


def start_upstream(port: int) -> subprocess.Popen:
    node = shutil.which("node")
    if node is None:
        sys.exit("node is required to run the fake upstream (bench/upstream/server.mjs)")
    argv = [node, str(BENCH / "upstream" / "server.mjs"), "--port", str(port)]
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        argv = ["taskset", "-c", "1", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("the fake upstream did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an already running fake upstream (default: start one)")
    ap.add_argument("--requests", type=int, default=int(os.environ.get("BENCH_CLIENT_REQUESTS", "20000")))
    ap.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONNECTIONS", "32")))
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop (uvicorn uses uvloop)")
    ap.add_argument("--stacks", default=",".join(STACKS),
                    help=f"comma list of {', '.join(STACKS)} (default: all; those not installed are skipped)")
    ap.add_argument("--repeat", type=int, default=1, help="run each stack this many times (in turn, round by round)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    stacks = [name.strip() for name in args.stacks.split(",") if name.strip()]
    for name in stacks:
        if name not in STACKS:
            ap.error(f"unknown stack {name!r} (known: {', '.join(STACKS)})")

    if (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})

    upstream = None
    url = args.url
    if url is None:
        port = free_port()
        upstream = start_upstream(port)
        url = f"http://127.0.0.1:{port}"

    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run

    results = []
    try:
        print(f"client stacks: {args.requests} GETs, {args.concurrency} in flight, {args.loop}, one core, upstream {url}")
        for name in stacks:
            if missing := missing_modules(name):
                print(f"  {name:<42} skipped: {', '.join(missing)} not installed (pip install -e '.[bench]')")
        stacks = [name for name in stacks if not missing_modules(name)]
        for rnd in range(args.repeat):
            if args.repeat > 1:
                print(f" run {rnd + 1}/{args.repeat}")
            for name in stacks:
                res = runner(STACKS[name](url, args.requests, args.concurrency))
                res["run"] = rnd + 1
                results.append(res)
                print(f"  {res['stack']:<42} {res['rps']:>9.1f} req/s   p50 {res['p50_ms']:>6.2f} ms   "
                      f"p99 {res['p99_ms']:>6.2f} ms" + (f"   errors {res['errors']}" if res["errors"] else ""))
    finally:
        if upstream is not None:
            upstream.terminate()
            upstream.wait(timeout=5)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"concurrency": args.concurrency, "loop": args.loop, "results": results}, indent=2))


if __name__ == "__main__":
    main()
