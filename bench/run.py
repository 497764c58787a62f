"""Load benchmark: falgate vs @fal-ai/server-proxy (Express adapter), same fast local upstream.

Started by `bash bench/run.sh` (which installs wrk and the Express proxy's node_modules first).

Layout on a 2-core machine:
  core 0: the proxy under test (falgate, then the Express proxy: one after the other, never together)
  core 1: the fake fal upstream (bench/upstream/server.mjs) and the load generator (wrk, one thread)

For each path (status poll, submit) and each front door it runs a warm-up, then a measured wrk run
(`--latency`, N connections, D seconds), and prints requests/s, p50, p99 and falgate/express ratios.
Results go to bench/results/latest.json (and a timestamped copy).

Front doors:
  express        POST|GET /api/fal/proxy + x-fal-target-url   (@fal-ai/server-proxy/express)
  falgate-proxy  POST|GET /api/fal/proxy + x-fal-target-url   (falgate, same protocol: apples to apples)
  falgate-queue  POST /fal-ai/kling-video/v2.1/standard/image-to-video, GET /fal-ai/kling-video/requests/{id}/status
                 (falgate's mirrored queue paths)

Compare mode (`--compare REV`, env BENCH_COMPARE): falgate at REV (checked out into a temporary git worktree,
removed at the end) against falgate from the current working tree, same interpreter and venv, alternately
(old, new, old, new, ...) on the falgate front doors and both paths, BENCH_ROUNDS rounds; prints each
round's req/s and the median new/old ratio per path and front door, with p50/p99. No Express.

Settings (`--settings`, env BENCH_SETTINGS): `production`, the default (falgate's defaults: log level info,
FALGATE_AUTH=api_key with a key that every request carries as `Authorization: Bearer ...`), so the figures are
what a deployment gets; or `bench`, the old figures' settings (access log off, no authentication), for
comparison only. Both raise the rate limits and the in-flight cap out of the way.

Options can also be given as env vars: BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_PICK,
BENCH_TARGETS, BENCH_PATHS, BENCH_COMPARE, BENCH_SETTINGS, BENCH_GATEWAY_CWD, BENCH_TOLERANCE.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LUA = BENCH / "wrk" / "request.lua"

MODEL = "fal-ai/kling-video/v2.1/standard/image-to-video"
APP = "fal-ai/kling-video"
SUBMIT_BODY = '{"prompt":"a cat","image_url":"https://example.com/cat.png"}'
FAL_QUEUE = "https://queue.fal.run"
FAL_KEY = "bench-key-id:bench-key-secret"

TARGET_LABELS = {
    "express": "@fal-ai/server-proxy (Express) /api/fal/proxy",
    "falgate-proxy": "falgate /api/fal/proxy",
    "falgate-queue": "falgate mirrored queue path",
}
ALL_TARGETS = list(TARGET_LABELS)
ALL_PATHS = ["status", "submit"]


# --------------------------------------------------------------------------------------------- processes
_children: list[subprocess.Popen] = []
_cleanups: list = []  # callables run once after the processes are stopped (e.g. removing a git worktree)


def _kill_group(proc: subprocess.Popen, timeout: float = 8.0) -> None:
    """Stop a child we started (and anything it forked) by its own process group id."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def cleanup() -> None:
    while _children:
        _kill_group(_children.pop())
    while _cleanups:
        try:
            _cleanups.pop()()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on; say what was left behind
            print(f"cleanup: {exc}", file=sys.stderr)


def _on_signal(signum, _frame) -> None:
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(argv: list[str], core: int | None) -> list[str]:
    if core is None:
        return argv
    return ["taskset", "-c", str(core), *argv]


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "".join(self.log.read_text(errors="replace").splitlines(keepends=True)[-n:])
        except OSError:
            return ""


def start_service(name: str, argv: list[str], port: int, env: dict[str, str], cwd: Path, logdir: Path,
                  health: str = "/healthz", timeout: float = 60.0) -> Service:
    log = logdir / f"{name}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    _children.append(proc)
    svc = Service(name, proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{svc.tail()}")
        try:
            with urllib.request.urlopen(svc.url + health, timeout=1) as r:
                if r.status < 500:
                    return svc
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    stop_service(svc)
    raise RuntimeError(f"{name} did not answer {health} within {timeout:.0f}s:\n{svc.tail()}")


def stop_service(svc: Service) -> None:
    _kill_group(svc.proc)
    if svc.proc in _children:
        _children.remove(svc.proc)


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (uvicorn may fork workers)."""
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    for k in kids:
        out.extend(process_tree(int(k)))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_times() -> dict[int, tuple[int, int]]:
    """Per-core (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            m = re.match(r"^cpu(\d+)\s+(.*)$", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[int(m.group(1))] = (sum(v[:8]) - idle, sum(v[:8]))
    except OSError:
        pass
    return out


def core_busy_pct(before: dict, after: dict) -> dict[str, float]:
    res = {}
    for core, (b1, t1) in after.items():
        b0, t0 = before.get(core, (0, 0))
        res[f"cpu{core}"] = round(100 * (b1 - b0) / max(1, t1 - t0), 1)
    return res


# --------------------------------------------------------------------------------------------- requests
@dataclass
class Scenario:
    path: str  # status | submit
    target: str  # express | falgate-proxy | falgate-queue
    method: str
    url_path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def scenario(path: str, target: str, request_id: str, extra: dict[str, str] | None = None) -> Scenario:
    """The request of a scenario; `extra` headers (the caller's Authorization) are added to it."""
    extra = extra or {}
    if path == "status":
        fal_path = f"/{APP}/requests/{request_id}/status?logs=1"
        if target == "falgate-queue":
            return Scenario(path, target, "GET", fal_path, {**extra})
        return Scenario(path, target, "GET", "/api/fal/proxy", {**extra, "x-fal-target-url": FAL_QUEUE + fal_path})
    if path == "submit":
        headers = {**extra, "content-type": "application/json"}
        if target == "falgate-queue":
            return Scenario(path, target, "POST", f"/{MODEL}", headers, SUBMIT_BODY)
        headers["x-fal-target-url"] = f"{FAL_QUEUE}/{MODEL}"
        return Scenario(path, target, "POST", "/api/fal/proxy", headers, SUBMIT_BODY)
    raise ValueError(path)


def send_once(base: str, sc: Scenario) -> tuple[int, bytes]:
    req = urllib.request.Request(base + sc.url_path, method=sc.method, headers=sc.headers,
                                 data=sc.body.encode() if sc.body is not None else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(base: str, sc: Scenario) -> dict:
    """One request before the load: the answer must be 2xx and look like fal's."""
    status, body = send_once(base, sc)
    info = {"status": status, "bytes": len(body), "sample": body[:400].decode(errors="replace")}
    ok = 200 <= status < 300
    try:
        doc = json.loads(body)
        ok = ok and isinstance(doc, dict) and "request_id" in doc and "status" in doc
    except ValueError:
        ok = False
    info["ok"] = ok
    return info


def first_request_id(base: str, target: str, extra: dict[str, str] | None = None) -> str | None:
    """Submit once through this front door; the status path then polls that (real) request id."""
    status, body = send_once(base, scenario("submit", target, "", extra))
    try:
        rid = json.loads(body).get("request_id") if 200 <= status < 300 else None
    except ValueError:
        rid = None
    return rid


# --------------------------------------------------------------------------------------------- wrk
def run_wrk(base: str, sc: Scenario, seconds: float, connections: int, core: int | None) -> dict:
    env = dict(os.environ)
    env["BENCH_METHOD"] = sc.method
    env["BENCH_PATH"] = sc.url_path
    env["BENCH_BODY"] = sc.body or ""
    env["BENCH_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in sc.headers.items())
    argv = pinned(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
                   "-s", str(LUA), base + "/"], core)
    # Tracked like the servers, so that an interrupted benchmark stops its load generator too.
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    _children.append(proc)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
    finally:
        _kill_group(proc)
        if proc in _children:
            _children.remove(proc)
    m = re.search(r"^BENCH_JSON (\{.*\})$", stdout, re.MULTILINE)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{stdout}\n{stderr}")
    res = json.loads(m.group(1))
    res["errors_total"] = sum(res["errors"].values())
    return res


def wait_for_quiet(max_wait: float, threshold_pct: float = 15.0) -> tuple[float, float]:
    """Wait (up to max_wait s) until no core is busier than threshold_pct over one second.

    The machine may be shared (other people's test suites): starting a run in a quiet moment keeps their
    load out of the figures. Returns (seconds waited, the busiest core's % in the last window)."""
    t0 = time.monotonic()
    busiest = 0.0
    while True:
        k0 = core_times()
        time.sleep(1.0)
        busiest = max(core_busy_pct(k0, core_times()).values() or [0.0])
        waited = time.monotonic() - t0
        if busiest <= threshold_pct or waited >= max_wait:
            return round(waited, 1), busiest


def measure(svc: Service, sc: Scenario, args, load_core: int | None, upstream: Service, proxy_core: int | None) -> dict:
    """Warm-up, then one measured wrk run, with the CPU use of the proxy, the upstream and each core."""
    quiet = None
    if args.wait_quiet > 0:
        quiet = wait_for_quiet(args.wait_quiet)
    if args.warmup > 0:
        run_wrk(svc.url, sc, args.warmup, args.connections, load_core)
    time.sleep(0.5)
    k0 = core_times()
    c0, u0, t0 = cpu_seconds(svc.proc.pid), cpu_seconds(upstream.proc.pid), time.monotonic()
    res = run_wrk(svc.url, sc, args.duration, args.connections, load_core)
    wall = time.monotonic() - t0
    res["proxy_cpu_pct"] = round(100 * (cpu_seconds(svc.proc.pid) - c0) / wall, 1)
    res["upstream_cpu_pct"] = round(100 * (cpu_seconds(upstream.proc.pid) - u0) / wall, 1)
    res["core_busy_pct"] = core_busy_pct(k0, core_times())
    if quiet is not None:
        res["waited_for_quiet_s"], res["busiest_core_before_pct"] = quiet
    # Requests per CPU-second of the proxy: steadier than req/s when other programs steal part of its core.
    res["rps_per_cpu_s"] = round(res["requests"] / max(1e-9, res["proxy_cpu_pct"] / 100 * wall), 1)
    if proxy_core is not None:
        # CPU of the proxy's core that the proxy itself did not use: other programs on the machine.
        res["foreign_cpu_pct_on_proxy_core"] = round(
            max(0.0, res["core_busy_pct"].get(f"cpu{proxy_core}", 0) - res["proxy_cpu_pct"]), 1)
    return res


def pick(runs: list[dict], how: str) -> dict:
    """The reported run of a scenario: the median by req/s, or the best (least disturbed) one."""
    runs = sorted(runs, key=lambda r: r["rps"])
    chosen = dict(runs[-1] if how == "best" else runs[(len(runs) - 1) // 2])
    chosen["rounds_rps"] = [round(r["rps"], 1) for r in runs]
    chosen["picked"] = how
    return chosen


# --------------------------------------------------------------------------------------------- profile
def profile(svc: Service, sc: Scenario, args, load_core: int | None, outdir: Path) -> dict | None:
    pyspy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(pyspy).exists():
        print("  (py-spy not found: pip install py-spy into the venv to profile)")
        return None
    outdir.mkdir(parents=True, exist_ok=True)
    stem = outdir / f"{sc.target}-{sc.path}"
    pids = process_tree(svc.proc.pid)
    pid = pids[-1]  # the serving process (a uvicorn worker if it forked one)
    secs = max(3, round(args.duration))
    # Blocking sampling (py-spy pauses the process ~100 times a second): whole, consistent stacks, at the
    # cost of a few percent of throughput during the profile run (whose figures are not reported).
    rec_raw = subprocess.Popen(pinned([pyspy, "record", "--pid", str(pid), "--duration", str(secs), "--rate", "100",
                                       "--format", "raw", "-o", f"{stem}.txt"], load_core),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _children.append(rec_raw)
    time.sleep(0.3)
    run_wrk(svc.url, sc, secs + 1, args.connections, load_core)
    try:
        rec_raw.wait(timeout=30)
    finally:
        _kill_group(rec_raw)
        _children.remove(rec_raw)
    raw = Path(f"{stem}.txt")
    if not raw.exists():
        print(f"  py-spy wrote nothing: {rec_raw.stderr.read().decode(errors='replace') if rec_raw.stderr else ''}")
        return None
    summary = summarize_collapsed(raw.read_text())
    (outdir / f"{sc.target}-{sc.path}.summary.json").write_text(json.dumps(summary, indent=2))
    try:  # a flame graph for people, from the same kind of run
        flame = subprocess.Popen(pinned([pyspy, "record", "--pid", str(pid), "--duration", "4", "--rate", "100",
                                         "-o", f"{stem}.svg"], load_core),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _children.append(flame)
        time.sleep(0.3)
        run_wrk(svc.url, sc, 5, args.connections, load_core)
        flame.wait(timeout=30)
        _children.remove(flame)
    except (subprocess.TimeoutExpired, OSError):
        pass
    return summary


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    fn, path = m.groups()
    path = re.sub(r"^.*?site-packages/", "", path)
    path = re.sub(r"^.*?/lib/python3\.\d+/", "stdlib/", path)
    path = path.replace(str(ROOT) + "/", "")
    return f"{fn} ({path})"


def _module_of(frame_name: str) -> str:
    m = re.search(r"\((.*)\)$", frame_name)
    path = m.group(1) if m else frame_name
    if path.startswith("stdlib/"):
        return "stdlib:" + path.split("/")[1].removesuffix(".py")
    return path.split("/")[0].removesuffix(".py")


def _line_of(path: Path, text: str) -> int:
    """The line number of `text` in a source file (0 when absent), so idle patterns follow edits."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    return next((n for n, line in enumerate(lines, start=1) if text in line), 0)


# Leaves (raw py-spy frames, with line numbers) that mean "this thread is waiting for work", not working.
# py-spy does not always see these as idle: a C-level queue get looks like a running Python frame.
_SQLITE_WAIT = _line_of(ROOT / "app" / "store" / "sqlite_worker.py", "self._jobs.get(")
_IDLE_RAW = [re.compile(p) for p in (
    rf"^(Worker\.)?_serve \(.*app/store/sqlite_worker\.py:{_SQLITE_WAIT}\)$",  # the store's worker: jobs.get()
    r"^Condition\.wait \(",
    r"^Event\.wait \(",
    r"^_worker \(.*concurrent/futures/thread\.py:\d+\)$",          # executor thread: work_queue.get()
    r"^WorkerThread\.run \(.*anyio/_backends/_asyncio\.py:\d+\)$",  # anyio worker: queue.get()
    r"^(select|poll|EpollSelector\.select) \(",
)]


def _is_idle(raw_leaf: str) -> bool:
    return any(p.search(raw_leaf) for p in _IDLE_RAW)


def _role(frames: list[str]) -> str:
    """Which thread a stack belongs to: the event loop (main thread) or a helper thread, by its root."""
    if not frames or "Thread._bootstrap" not in frames[0]:
        return "event loop thread"
    for f in frames:
        if f.startswith(("Worker._serve", "_serve")) and "sqlite_worker" in f:
            return "sqlite worker thread (store calls)"
        if f.startswith("_worker (") and "concurrent/futures" in f:
            return "executor threads (run_in_executor / to_thread)"
        if f.startswith("WorkerThread.run"):
            return "anyio worker threads (FastAPI sync dependencies / run_in_threadpool)"
    return "other threads"


def summarize_collapsed(text: str, top: int = 25) -> dict:
    """From py-spy's raw (collapsed) stacks: busy samples per thread role, and for the event loop thread
    self time per function and per package and inclusive time per gateway (app/) function."""
    self_t: dict[str, int] = {}
    incl_app: dict[str, int] = {}
    incl_all: dict[str, int] = {}
    by_pkg: dict[str, int] = {}
    roles: dict[str, int] = {}
    total = idle = loop_busy = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        raw = [f for f in stack.split(";") if "(" in f]
        if not raw:
            continue
        total += n
        if _is_idle(raw[-1]):
            idle += n
            continue
        frames = [_frame_name(f) for f in raw]
        role = _role(frames)
        roles[role] = roles.get(role, 0) + n
        if role != "event loop thread":
            continue
        loop_busy += n
        leaf = frames[-1]
        self_t[leaf] = self_t.get(leaf, 0) + n
        by_pkg[_module_of(leaf)] = by_pkg.get(_module_of(leaf), 0) + n
        for f in set(frames):
            incl_all[f] = incl_all.get(f, 0) + n
            if "(app/" in f:
                incl_app[f] = incl_app.get(f, 0) + n

    busy = max(1, total - idle)
    loop = max(1, loop_busy)

    def pct(d: dict[str, int], base: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / base, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {
        "samples": total,
        "idle_samples": idle,
        "busy_by_thread_role": pct(roles, busy),  # % of all busy samples
        # the rest: % of the event loop thread's busy samples
        "loop_self": pct(self_t, loop),
        "loop_self_by_package": pct(by_pkg, loop),
        "loop_inclusive_app": pct(incl_app, loop),
        "loop_inclusive": pct(incl_all, loop),
    }


def print_profile(summary: dict, title: str, top: int = 12) -> None:
    busy = summary["samples"] - summary["idle_samples"]
    print(f"    profile {title}: {busy} busy samples; by thread: "
          + ", ".join(f"{k} {v:.0f}%" for k, v in summary["busy_by_thread_role"]))
    print("    event loop thread, self time by package: "
          + ", ".join(f"{k} {v:.0f}%" for k, v in summary["loop_self_by_package"][:top]))
    print("    event loop thread, inclusive time in gateway code:")
    for k, v in summary["loop_inclusive_app"][:top]:
        print(f"      {v:5.1f}%  {k}")
    print("    event loop thread, hottest functions (self):")
    for k, v in summary["loop_self"][:top]:
        print(f"      {v:5.1f}%  {k}")


# --------------------------------------------------------------------------------------------- falgate's settings
BENCH_CALLER = "bench"
_QUIET_LOG_LEVEL = "warning"  # the `bench` option's level: the per-request access line (info) is not written


@dataclass
class GatewaySettings:
    """How falgate is configured and called.

    production: (the default) falgate's own defaults where they cost time per request: log level info (one access log
                line per request) and FALGATE_AUTH=api_key, the key held as a sha256 entry and sent by the
                load generator as `Authorization: Bearer <key>`.
    bench:      the settings of the figures before issue 16, for comparison only: no access log (the level
                above info) and no authentication (anonymous callers allowed).
    Both raise the rate limits and the in-flight cap out of the way (at the defaults the benchmark would
    measure 429s), and use falgate's default kind of store, a fresh SQLite file per scenario."""

    mode: str  # bench | production
    key: str | None = None

    @classmethod
    def of(cls, mode: str) -> GatewaySettings:
        return cls(mode, secrets.token_urlsafe(32) if mode == "production" else None)

    def env(self) -> dict[str, str]:
        if self.mode == "production":
            digest = hashlib.sha256(self.key.encode()).hexdigest()
            return {"FALGATE_LOG_LEVEL": "info", "FALGATE_AUTH": "api_key",
                    "FALGATE_API_KEYS": f"{BENCH_CALLER}:sha256:{digest}"}
        return {"FALGATE_LOG_LEVEL": _QUIET_LOG_LEVEL, "FALGATE_AUTH": "none", "FALGATE_ALLOW_ANONYMOUS": "true"}

    def headers(self, target: str) -> dict[str, str]:
        """What a caller of this front door sends besides the request itself (only falgate takes a key)."""
        if self.key and target.startswith("falgate"):
            return {"authorization": f"Bearer {self.key}"}
        return {}

    def describe(self) -> str:
        if self.mode == "production":
            return "production settings (log level info, FALGATE_AUTH=api_key, Bearer key on every request)"
        return f"bench settings (log level {_QUIET_LOG_LEVEL}, FALGATE_AUTH=none; not what a deployment gets)"


def redacted(headers: dict[str, str]) -> dict[str, str]:
    """Headers as written to the results: no key, even a throwaway one."""
    return {k: ("Bearer <redacted>" if k.lower() == "authorization" else v) for k, v in headers.items()}


# --------------------------------------------------------------------------------------------- trees (compare mode)
def git(*argv: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *argv], cwd=cwd, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(argv)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def add_worktree(rev: str) -> tuple[Path, str]:
    """Check REV out into a temporary git worktree (detached), removed again by cleanup()."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = Path(tempfile.mkdtemp(prefix="falgate-bench-old-"))

    def remove() -> None:
        try:
            git("worktree", "remove", "--force", str(tree))
        except RuntimeError:
            shutil.rmtree(tree, ignore_errors=True)
            git("worktree", "prune")
        print(f"removed the worktree {tree}")

    _cleanups.append(remove)
    git("worktree", "add", "--detach", str(tree), sha)
    return tree, sha


# Run in a tree with the gateway's interpreter and environment: which `app` it imports, and which of that
# tree's declared dependencies this venv lacks (or has in a version the tree does not accept).
_PREFLIGHT = r"""
import json, re, sys, tomllib
from importlib import metadata
from pathlib import Path
import app
out = {"app_file": app.__file__, "python": sys.executable, "missing": [], "aiohttp_importers": []}
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
try:
    deps = tomllib.loads(Path("pyproject.toml").read_text()).get("project", {}).get("dependencies", [])
except OSError:
    deps = []
for dep in deps:
    spec = None
    if Requirement is not None:
        req = Requirement(dep)
        if req.marker is not None and not req.marker.evaluate():
            continue
        name, spec = req.name, req.specifier
    else:
        name = re.match(r"[A-Za-z0-9._-]+", dep).group(0)
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        out["missing"].append(dep)
        continue
    if spec is not None and not spec.contains(have, prereleases=True):
        out["missing"].append(f"{dep} (installed: {have})")
for f in sorted(Path("app").rglob("*.py")):
    if re.search(r"^\s*(import|from)\s+aiohttp\b", f.read_text(errors="replace"), re.M):
        out["aiohttp_importers"].append(str(f))
try:
    out["aiohttp"] = metadata.version("aiohttp")
except metadata.PackageNotFoundError:
    out["aiohttp"] = None
print(json.dumps(out))
"""


def preflight(tree: Path, gateway_cmd: str, env: dict[str, str]) -> dict:
    """Which app/ the gateway command's interpreter imports when started in `tree`, and what it lacks."""
    argv = gateway_cmd.split()
    out = subprocess.run([argv[0], "-c", _PREFLIGHT], cwd=tree, env=env, check=False, capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} could not import app in {tree}:\n{out.stderr.strip()}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info["imports_from_tree"] = Path(info["app_file"]).resolve().is_relative_to(tree.resolve())
    return info


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- main
def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "wrk": version(["wrk", "--version"]),
    }


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=float(env("BENCH_DURATION", 10)), help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=float(env("BENCH_WARMUP", 5)), help="seconds of warm-up per scenario")
    ap.add_argument("--connections", type=int, default=int(env("BENCH_CONNECTIONS", 32)))
    ap.add_argument("--rounds", type=int, default=int(env("BENCH_ROUNDS", 1)),
                    help="rounds: each starts every proxy afresh and runs every scenario once (interleaves noise)")
    ap.add_argument("--pick", choices=["median", "best"], default=env("BENCH_PICK", "median"),
                    help="which round to report per scenario (best: least disturbed by other programs)")
    ap.add_argument("--targets", default=env("BENCH_TARGETS", ",".join(ALL_TARGETS)), help=f"comma list of {ALL_TARGETS}")
    ap.add_argument("--paths", default=env("BENCH_PATHS", ",".join(ALL_PATHS)), help=f"comma list of {ALL_PATHS}")
    ap.add_argument("--wait-quiet", type=float, default=float(env("BENCH_WAIT_QUIET", 0)),
                    help="before each scenario wait up to this many seconds for the machine to be idle (shared machines)")
    ap.add_argument("--profile", action="store_true", help="after measuring, profile falgate with py-spy on each scenario")
    ap.add_argument("--gateway-cmd", default=env("BENCH_GATEWAY_CMD", f"{sys.executable} -m app.cli serve"),
                    help="how to start falgate (default: this python -m app.cli serve)")
    ap.add_argument("--gateway-cwd", default=env("BENCH_GATEWAY_CWD", str(ROOT)),
                    help="the tree falgate is started in, whose app/ it imports (default: this checkout); "
                         "in compare mode, the new side")
    ap.add_argument("--compare", metavar="REV", default=env("BENCH_COMPARE") or None,
                    help="compare mode: falgate at REV (old, a temporary git worktree) against --gateway-cwd (new), "
                         "alternately, on the falgate front doors; no Express")
    ap.add_argument("--settings", choices=["bench", "production"], default=env("BENCH_SETTINGS") or None,
                    help="falgate's settings: production (the default: log level info, api_key auth) or bench "
                         "(the old figures' settings: no access log, no auth)")
    ap.add_argument("--tolerance", type=float, default=float(env("BENCH_TOLERANCE", 0.05)),
                    help="compare mode: new may be this much slower than old (median of the per-round ratios)")
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--output", default=None,
                    help="results JSON (default: bench/results/latest.json, compare mode compare-latest.json)")
    args = ap.parse_args()
    compare = bool(args.compare)
    if args.settings is None:
        args.settings = "production"
    if args.output is None:
        args.output = str(RESULTS / ("compare-latest.json" if compare else "latest.json"))
    gw = GatewaySettings.of(args.settings)
    new_tree = Path(args.gateway_cwd).resolve()

    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    for t in wanted - set(ALL_TARGETS):
        ap.error(f"unknown target {t}")
    targets = [t for t in ALL_TARGETS if t in wanted]  # Express first
    notes: list[str] = []
    if compare:
        if "express" in targets:
            if env("BENCH_TARGETS") or any(a.startswith("--targets") for a in sys.argv[1:]):
                notes.append("compare mode measures falgate only: express left out")
            targets.remove("express")
        if not targets:
            ap.error("compare mode needs falgate-proxy and/or falgate-queue in --targets")
        if args.profile:
            ap.error("--profile is not supported in compare mode")
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for p in paths:
        if p not in ALL_PATHS:
            ap.error(f"unknown path {p}")
    if shutil.which("wrk") is None:
        print("wrk is not installed (bash bench/run.sh installs it)", file=sys.stderr)
        return 2

    two_cores = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None and not args.no_pin
    proxy_core = 0 if two_cores else None
    load_core = 1 if two_cores else None

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    logdir = RESULTS / f"logs-{stamp}"
    logdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, kernel {info['kernel']}, python {info['python']}, "
          f"node {info['node']}, {info['wrk']}")
    print(f"load: wrk 1 thread, {args.connections} connections, {args.warmup:g}s warm-up + {args.duration:g}s, {args.rounds} round(s)"
          + ("" if compare else f", {args.pick} kept") + "; "
          + ("proxy on core 0, upstream + wrk on core 1" if two_cores else "no CPU pinning"))
    print(f"falgate: {gw.describe()}")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_", "BENCH_"))}

    # ---- the trees falgate runs from: (side, tree); one side (None) outside compare mode
    trees: list[tuple[str | None, Path]] = [(None, new_tree)]
    tree_info: dict[str, dict] = {}
    if compare:
        try:
            old_tree, old_sha = add_worktree(args.compare)
        except RuntimeError as exc:
            print(f"compare: cannot check out {args.compare!r}: {exc}", file=sys.stderr)
            cleanup()
            return 2
        trees = [("old", old_tree), ("new", new_tree)]
        head = git("rev-parse", "HEAD", cwd=new_tree)
        dirty = bool(git("status", "--porcelain", "--", "app", "pyproject.toml", cwd=new_tree))
        tree_info["old"] = {"tree": str(old_tree), "rev": args.compare, "commit": old_sha}
        tree_info["new"] = {"tree": str(new_tree), "commit": head, "uncommitted_changes_in_app": dirty}
        check_env = {**base_env, **gw.env(), "FAL_KEY": FAL_KEY, "FALGATE_UPSTREAM": "live"}
        lacking = []
        for side, tree in trees:
            try:
                pf = preflight(tree, args.gateway_cmd, check_env)
            except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
                print(f"compare: {side}: {exc}", file=sys.stderr)
                cleanup()
                return 2
            tree_info[side].update(pf)
            where = "OK" if pf["imports_from_tree"] else "NOT FROM THIS TREE"
            print(f"{side}: {tree} ({tree_info[side]['commit'][:12]}"
                  + (", with uncommitted changes in app/" if tree_info[side].get("uncommitted_changes_in_app") else "")
                  + f"): imports {pf['app_file']} [{where}]")
            if pf["aiohttp_importers"]:
                print(f"  {side} tree imports aiohttp in {len(pf['aiohttp_importers'])} file(s) "
                      f"({', '.join(pf['aiohttp_importers'][:3])}); installed: aiohttp {pf['aiohttp'] or 'NO'}")
            if not pf["imports_from_tree"]:
                print(f"compare: {side}: app is imported from {pf['app_file']}, not from {tree}", file=sys.stderr)
                cleanup()
                return 2
            if pf["missing"] or (pf["aiohttp_importers"] and not pf["aiohttp"]):
                lacking += [f"{side}: {m}" for m in pf["missing"] or ["aiohttp"]]
        if lacking:
            print("compare: this venv lacks what a tree declares:\n  " + "\n  ".join(lacking)
                  + f"\ninstall it first, e.g. {Path(args.gateway_cmd.split()[0]).parent}/pip install 'NAME>=VERSION'",
                  file=sys.stderr)
            cleanup()
            return 2

    up_port = free_port()
    upstream = start_service("upstream", pinned(["node", str(BENCH / "upstream" / "server.mjs"), "--port", str(up_port)], load_core),
                             up_port, base_env, BENCH, logdir)
    print(f"fake upstream: {upstream.url} (pid {upstream.proc.pid})")

    rows: dict[tuple, dict] = {}  # (path, target) or (path, target, side) -> row with "runs": [...]

    def start_express() -> Service:
        ex_dir = BENCH / "express-proxy"
        if not (ex_dir / "node_modules" / "@fal-ai" / "server-proxy").exists():
            raise RuntimeError("bench/express-proxy/node_modules is missing: run bash bench/run.sh (npm ci)")
        port = free_port()
        ex_env = {**base_env, "FAL_KEY": FAL_KEY, "BENCH_UPSTREAM_URL": upstream.url, "PORT": str(port),
                  "HOST": "127.0.0.1", "NODE_ENV": "production"}
        return start_service("express-proxy", pinned(["node", "server.mjs"], proxy_core), port, ex_env, ex_dir, logdir)

    def start_falgate(tree: Path, side: str | None) -> tuple[Service, Path]:
        port = free_port()
        store_dir = Path(tempfile.mkdtemp(prefix="falgate-bench-"))
        fg_env = {
            **base_env,
            "FAL_KEY": FAL_KEY,
            "FALGATE_UPSTREAM": "live",
            "FALGATE_FAL_QUEUE_URL": upstream.url,
            "FALGATE_FAL_RUN_URL": upstream.url,
            "FALGATE_FAL_REST_URL": upstream.url,
            "FALGATE_FAL_JWKS_URL": upstream.url + "/.well-known/jwks.json",
            "FALGATE_PORT": str(port),
            "FALGATE_HOST": "127.0.0.1",
            "FALGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            **gw.env(),
            "FALGATE_RATE_LIMIT_SUBMIT": "1000000/minute",
            "FALGATE_RATE_LIMIT_READ": "1000000/minute",
            "FALGATE_MAX_INFLIGHT": "1000000",
            "FALGATE_STORE_URL": f"sqlite:///{store_dir / 'falgate.db'}",
            "FALGATE_WORKERS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        # BENCH_FALGATE_ENV="A=1 B=2" adds or overrides settings for experiments.
        for kv in env("BENCH_FALGATE_ENV", "").split():
            k, _, v = kv.partition("=")
            fg_env[k] = v
        name = "falgate" if side is None else f"falgate-{side}"
        try:
            svc = start_service(name, pinned(args.gateway_cmd.split(), proxy_core), port, fg_env, tree, logdir)
        except RuntimeError:
            shutil.rmtree(store_dir, ignore_errors=True)
            raise
        if side is not None:  # the serving process runs in the side's tree (so its `app` is that tree's)
            cwd = process_cwd(svc.proc.pid)
            if cwd is not None and cwd.resolve() != tree.resolve():
                stop_service(svc)
                shutil.rmtree(store_dir, ignore_errors=True)
                raise RuntimeError(f"{name} runs in {cwd}, not in {tree}")
            tree_info[side]["server_cwd"] = str(cwd)
        return svc, store_dir

    def run_scenario(path: str, target: str, rnd: int, side: str | None = None, tree: Path = new_tree) -> None:
        """One scenario on a freshly started proxy (falgate: with a fresh store), so scenarios do not
        inherit each other's state (falgate's per-submit cost grows with the requests it holds)."""
        store_dir = None
        who = target if side is None else f"{target} {side}"
        try:
            if target == "express":
                svc = start_express()
            else:
                svc, store_dir = start_falgate(tree, side)
        except RuntimeError as exc:
            notes.append(f"{who} not measured: {str(exc).splitlines()[0]}")
            print(f"  {path:<7} {who:<18} FAILED TO START\n{exc}")
            return
        try:
            extra = gw.headers(target)
            rid = first_request_id(svc.url, target, extra) if path == "status" else None
            if path == "status" and rid is None:
                rid = "0b5e00000000000000000000"
            sc = scenario(path, target, rid or "", extra)
            chk = check(svc.url, sc)
            row = {"path": path, "target": target, "label": TARGET_LABELS[target], "method": sc.method,
                   "url_path": sc.url_path, "headers": redacted(sc.headers), "check": chk}
            if side is not None:
                row["side"] = side
            key = (path, target) if side is None else (path, target, side)
            row = rows.setdefault(key, {**row, "runs": []})
            if not chk["ok"]:
                print(f"  {path:<7} {who:<18} SKIPPED: check answered {chk['status']}: {chk['sample'][:200]}")
                row["skipped"] = f"check answered {chk['status']}"
                return
            res = measure(svc, sc, args, load_core, upstream, proxy_core)
            res["round"] = rnd
            row["runs"].append(res)
            lat = res["latency_us"]
            err = f"  errors {res['errors']}" if res["errors_total"] else ""
            foreign = res.get("foreign_cpu_pct_on_proxy_core", 0)
            if foreign > 10:
                err += f"  WARNING: other programs used {foreign:.0f}% of the proxy's core"
            print(f"  {path:<7} {who:<18} {res['rps']:>9.1f} req/s ({res['rps_per_cpu_s']:>6.0f}/cpu-s)  p50 {lat['p50'] / 1000:>7.2f} ms  "
                  f"p99 {lat['p99'] / 1000:>7.2f} ms  cpu: proxy {res['proxy_cpu_pct']:>5.1f}% upstream "
                  f"{res['upstream_cpu_pct']:>5.1f}% cores {'/'.join(f'{v:.0f}' for v in res['core_busy_pct'].values())}%{err}")
            if args.profile and target.startswith("falgate") and rnd == args.rounds - 1:
                summary = profile(svc, sc, args, load_core, RESULTS / "profiles")
                if summary:
                    row["profile"] = summary
                    print_profile(summary, f"{target} {path}")
        finally:
            stop_service(svc)
            if store_dir is not None:
                shutil.rmtree(store_dir, ignore_errors=True)

    def one_round(rnd: int) -> None:
        missing_cli = "app.cli" in args.gateway_cmd and any(not (tree / "app" / "cli.py").exists() for _, tree in trees)
        if any(t.startswith("falgate") for t in targets) and missing_cli:
            notes.append("falgate not measured: app/cli.py does not exist yet")
        # Proxies one after the other, never together; Express first on each path. In compare mode each
        # scenario runs old then new, so the whole run alternates old, new, old, new.
        for path in paths:
            for target in targets:
                if target.startswith("falgate") and "falgate not measured: app/cli.py does not exist yet" in notes:
                    continue
                for side, tree in (trees if target.startswith("falgate") else [(None, new_tree)]):
                    run_scenario(path, target, rnd, side, tree)

    try:
        for rnd in range(args.rounds):
            if args.rounds > 1:
                print(f"round {rnd + 1}/{args.rounds}")
            one_round(rnd)
    finally:
        stop_service(upstream)
        cleanup()

    settings_doc = {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
                    "rounds": args.rounds, "wrk_threads": 1, "pinning": two_cores, "proxy_core": proxy_core,
                    "load_and_upstream_core": load_core, "falgate_settings": args.settings}
    if compare:
        doc = report_compare(rows, paths, targets, args, notes)
        doc.update({"settings": settings_doc, "trees": tree_info})
    else:
        settings_doc["pick"] = args.pick
        doc = report_express(rows, paths, targets, args, notes)
        doc["settings"] = settings_doc
    doc = {"when": dt.datetime.now().isoformat(timespec="seconds"), "machine": info, **doc, "logs": str(logdir)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    (RESULTS / f"{'compare' if compare else 'run'}-{stamp}.json").write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")
    if any(run.get("errors_total") for r in doc["results"] for run in r.get("all_rounds", [])):
        print("warning: some runs had errors (see errors in the JSON)")
    return 0


def report_express(rows: dict, paths: list[str], targets: list[str], args, notes: list[str]) -> dict:
    """The falgate vs Express table and the 2x verdict per path (the default mode)."""
    results: list[dict] = []
    for row in rows.values():
        runs = row.pop("runs")
        if runs:
            row.update(pick(runs, args.pick))
            row["all_rounds"] = runs
        results.append(row)
    by = {(r["path"], r["target"]): r for r in results if "rps" in r}
    comparisons = []
    print()
    print(f"{'path':<8} {'front door':<48} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'req/cpu-s':>10}")
    print("-" * 103)
    for path in paths:
        for target in targets:
            r = by.get((path, target))
            if r is None:
                continue
            lat = r["latency_us"]
            print(f"{path:<8} {TARGET_LABELS[target]:<48} {r['rps']:>9.1f} {lat['p50'] / 1000:>8.2f} "
                  f"{lat['p99'] / 1000:>8.2f} {r['errors_total']:>7} {r['rps_per_cpu_s']:>10.0f}")
    print()
    for path in paths:
        ex = by.get((path, "express"))
        for target in ("falgate-proxy", "falgate-queue"):
            fg = by.get((path, target))
            if ex is None or fg is None:
                continue
            # Each round runs every scenario once, minutes apart at most: a ratio within a round compares
            # runs under the same machine conditions. Their median is the verdict (with one round, the
            # ratio of that round), robust to the machine's speed drifting between rounds.
            round_ratios = [f["rps"] / e["rps"] for f, e in zip(fg["all_rounds"], ex["all_rounds"], strict=False)]
            ratio = statistics.median(round_ratios) if round_ratios else fg["rps"] / ex["rps"]
            cpu_ratio = fg["rps_per_cpu_s"] / ex["rps_per_cpu_s"]
            met = ratio >= 2.0
            comparisons.append({"path": path, "falgate": target, "ratio": round(ratio, 2), "target_2x_met": met,
                                "round_ratios": [round(r, 2) for r in round_ratios],
                                "per_cpu_ratio": round(cpu_ratio, 2),
                                "p50_ratio": round(ex["latency_us"]["p50"] / max(1, fg["latency_us"]["p50"]), 2),
                                "p99_ratio": round(ex["latency_us"]["p99"] / max(1, fg["latency_us"]["p99"]), 2)})
            rounds_note = f" (rounds: {' '.join(f'{r:.2f}x' for r in round_ratios)})" if len(round_ratios) > 1 else ""
            print(f"{path:<8} {TARGET_LABELS[target]:<34} / express = {ratio:5.2f}x requests/s{rounds_note} "
                  f"({cpu_ratio:4.2f}x per CPU-second of the kept runs)   2x target: {'MET' if met else 'NOT MET'}")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    return {"results": results, "comparisons": comparisons, "notes": notes}


def report_compare(rows: dict, paths: list[str], targets: list[str], args, notes: list[str]) -> dict:
    """Compare mode: each round's req/s old and new, and per path and front door the median of the
    per-round new/old ratios (old and new ran a minute apart at most), with the median p50/p99 of each side."""
    results = []
    for row in rows.values():
        runs = row.pop("runs")
        row["all_rounds"] = runs
        results.append(row)
    by = {(r["path"], r["target"], r["side"]): {run["round"]: run for run in r["all_rounds"]} for r in results}

    def med(runs: list[dict], get) -> float:
        return statistics.median([get(r) for r in runs]) if runs else float("nan")

    comparisons = []
    print()
    print(f"{'path':<8} {'front door':<30} {'round':>5} {'old req/s':>10} {'new req/s':>10} {'new/old':>8}")
    print("-" * 76)
    for path in paths:
        for target in targets:
            old, new = by.get((path, target, "old"), {}), by.get((path, target, "new"), {})
            for rnd in sorted(set(old) | set(new)):
                o, n = old.get(rnd), new.get(rnd)
                ratio = f"{n['rps'] / o['rps']:7.3f}x" if o and n else "-"
                print(f"{path:<8} {TARGET_LABELS[target]:<30} {rnd + 1:>5} {o['rps'] if o else float('nan'):>10.1f} "
                      f"{n['rps'] if n else float('nan'):>10.1f} {ratio:>8}")
    print()
    print(f"{'path':<8} {'front door':<30} {'old req/s':>10} {'new req/s':>10} {'new/old':>8}  "
          f"{'p50 ms old/new':>15}  {'p99 ms old/new':>15}  within {args.tolerance:.0%}  {'per cpu-s':>9}")
    print("-" * 129)
    for path in paths:
        for target in targets:
            old, new = by.get((path, target, "old"), {}), by.get((path, target, "new"), {})
            both = sorted(set(old) & set(new))
            if not both:
                print(f"{path:<8} {TARGET_LABELS[target]:<30} not measured on both sides")
                continue
            round_ratios = [new[r]["rps"] / old[r]["rps"] for r in both]
            ratio = statistics.median(round_ratios)
            # Requests per CPU-second of falgate: steadier than req/s when other programs take part of its core.
            cpu_ratio = statistics.median([new[r]["rps_per_cpu_s"] / old[r]["rps_per_cpu_s"] for r in both])
            o_runs, n_runs = [old[r] for r in both], [new[r] for r in both]
            lat = {side: {q: med(runs, lambda r, q=q: r["latency_us"][q] / 1000) for q in ("p50", "p99")}
                   for side, runs in (("old", o_runs), ("new", n_runs))}
            ok = ratio >= 1 - args.tolerance
            comparisons.append({
                "path": path, "falgate": target, "rounds": len(both), "ratio_new_old": round(ratio, 3),
                "round_ratios": [round(r, 3) for r in round_ratios], "per_cpu_ratio_new_old": round(cpu_ratio, 3),
                "old_rps_median": round(med(o_runs, lambda r: r["rps"]), 1),
                "new_rps_median": round(med(n_runs, lambda r: r["rps"]), 1),
                "old_rps_per_cpu_s_median": round(med(o_runs, lambda r: r["rps_per_cpu_s"]), 1),
                "new_rps_per_cpu_s_median": round(med(n_runs, lambda r: r["rps_per_cpu_s"]), 1),
                "latency_ms_median": lat, "within_tolerance": ok, "tolerance": args.tolerance})
            c = comparisons[-1]
            print(f"{path:<8} {TARGET_LABELS[target]:<30} {c['old_rps_median']:>10.1f} {c['new_rps_median']:>10.1f} "
                  f"{ratio:>7.3f}x  {lat['old']['p50']:>6.2f}/{lat['new']['p50']:<8.2f}  "
                  f"{lat['old']['p99']:>6.2f}/{lat['new']['p99']:<8.2f}  {'yes' if ok else 'NO ':<10} {cpu_ratio:>8.3f}x"
                  + (f"   (rounds: {' '.join(f'{r:.3f}x' for r in round_ratios)})" if len(round_ratios) > 1 else ""))
    print(f"\nnew/old: the median of the per-round ratios of req/s (per cpu-s: of requests per CPU-second of "
          f"falgate); req/s and latencies: medians over the rounds; within {args.tolerance:.0%}: new/old >= "
          f"{1 - args.tolerance:.2f}")
    for n in dict.fromkeys(notes):
        print(f"note: {n}")
    return {"mode": "compare", "results": results, "comparisons": comparisons, "notes": notes}


if __name__ == "__main__":
    sys.exit(main())
