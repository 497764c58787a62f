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

Options can also be given as env vars: BENCH_DURATION, BENCH_WARMUP, BENCH_CONNECTIONS, BENCH_ROUNDS, BENCH_PICK,
BENCH_TARGETS, BENCH_PATHS.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import re
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


def scenario(path: str, target: str, request_id: str) -> Scenario:
    if path == "status":
        fal_path = f"/{APP}/requests/{request_id}/status?logs=1"
        if target == "falgate-queue":
            return Scenario(path, target, "GET", fal_path)
        return Scenario(path, target, "GET", "/api/fal/proxy", {"x-fal-target-url": FAL_QUEUE + fal_path})
    if path == "submit":
        headers = {"content-type": "application/json"}
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


def first_request_id(base: str, target: str) -> str | None:
    """Submit once through this front door; the status path then polls that (real) request id."""
    status, body = send_once(base, scenario("submit", target, ""))
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
    ap.add_argument("--no-pin", action="store_true", help="do not use taskset")
    ap.add_argument("--output", default=str(RESULTS / "latest.json"))
    args = ap.parse_args()

    wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
    for t in wanted - set(ALL_TARGETS):
        ap.error(f"unknown target {t}")
    targets = [t for t in ALL_TARGETS if t in wanted]  # Express first
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
    print(f"load: wrk 1 thread, {args.connections} connections, {args.warmup:g}s warm-up + {args.duration:g}s, {args.rounds} round(s), {args.pick} kept; "
          + ("proxy on core 0, upstream + wrk on core 1" if two_cores else "no CPU pinning"))

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("FALGATE_", "FAL_", "BENCH_"))}
    up_port = free_port()
    upstream = start_service("upstream", pinned(["node", str(BENCH / "upstream" / "server.mjs"), "--port", str(up_port)], load_core),
                             up_port, base_env, BENCH, logdir)
    print(f"fake upstream: {upstream.url} (pid {upstream.proc.pid})")

    rows: dict[tuple[str, str], dict] = {}  # (path, target) -> row with "runs": [...]
    notes: list[str] = []

    def start_express() -> Service:
        ex_dir = BENCH / "express-proxy"
        if not (ex_dir / "node_modules" / "@fal-ai" / "server-proxy").exists():
            raise RuntimeError("bench/express-proxy/node_modules is missing: run bash bench/run.sh (npm ci)")
        port = free_port()
        ex_env = {**base_env, "FAL_KEY": FAL_KEY, "BENCH_UPSTREAM_URL": upstream.url, "PORT": str(port),
                  "HOST": "127.0.0.1", "NODE_ENV": "production"}
        return start_service("express-proxy", pinned(["node", "server.mjs"], proxy_core), port, ex_env, ex_dir, logdir)

    def start_falgate() -> Service:
        port = free_port()
        store = Path(tempfile.mkdtemp(prefix="falgate-bench-")) / "falgate.db"
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
            "FALGATE_LOG_LEVEL": "warning",
            "FALGATE_AUTH": "none",
            "FALGATE_ALLOW_ANONYMOUS": "true",
            "FALGATE_RATE_LIMIT_SUBMIT": "1000000/minute",
            "FALGATE_RATE_LIMIT_READ": "1000000/minute",
            "FALGATE_MAX_INFLIGHT": "1000000",
            "FALGATE_STORE_URL": f"sqlite:///{store}",
            "FALGATE_WORKERS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        # BENCH_FALGATE_ENV="A=1 B=2" adds or overrides settings for experiments.
        for kv in env("BENCH_FALGATE_ENV", "").split():
            k, _, v = kv.partition("=")
            fg_env[k] = v
        return start_service("falgate", pinned(args.gateway_cmd.split(), proxy_core), port, fg_env, ROOT, logdir)

    def run_scenario(path: str, target: str, rnd: int) -> None:
        """One scenario on a freshly started proxy (falgate: with a fresh store), so scenarios do not
        inherit each other's state (falgate's per-submit cost grows with the requests it holds)."""
        try:
            svc = start_express() if target == "express" else start_falgate()
        except RuntimeError as exc:
            notes.append(f"{target} not measured: {str(exc).splitlines()[0]}")
            print(f"  {path:<7} {target:<14} FAILED TO START\n{exc}")
            return
        try:
            rid = first_request_id(svc.url, target) if path == "status" else None
            if path == "status" and rid is None:
                rid = "0b5e00000000000000000000"
            sc = scenario(path, target, rid or "")
            chk = check(svc.url, sc)
            row = {"path": path, "target": target, "label": TARGET_LABELS[target], "method": sc.method,
                   "url_path": sc.url_path, "headers": sc.headers, "check": chk}
            row = rows.setdefault((path, target), {**row, "runs": []})
            if not chk["ok"]:
                print(f"  {path:<7} {target:<14} SKIPPED: check answered {chk['status']}: {chk['sample'][:200]}")
                row["skipped"] = f"check answered {chk['status']}"
                return
            res = measure(svc, sc, args, load_core, upstream, proxy_core)
            row["runs"].append(res)
            lat = res["latency_us"]
            err = f"  errors {res['errors']}" if res["errors_total"] else ""
            foreign = res.get("foreign_cpu_pct_on_proxy_core", 0)
            if foreign > 10:
                err += f"  WARNING: other programs used {foreign:.0f}% of the proxy's core"
            print(f"  {path:<7} {target:<14} {res['rps']:>9.1f} req/s ({res['rps_per_cpu_s']:>6.0f}/cpu-s)  p50 {lat['p50'] / 1000:>7.2f} ms  "
                  f"p99 {lat['p99'] / 1000:>7.2f} ms  cpu: proxy {res['proxy_cpu_pct']:>5.1f}% upstream "
                  f"{res['upstream_cpu_pct']:>5.1f}% cores {'/'.join(f'{v:.0f}' for v in res['core_busy_pct'].values())}%{err}")
            if args.profile and target.startswith("falgate") and rnd == args.rounds - 1:
                summary = profile(svc, sc, args, load_core, RESULTS / "profiles")
                if summary:
                    row["profile"] = summary
                    print_profile(summary, f"{target} {path}")
        finally:
            stop_service(svc)

    def one_round(rnd: int) -> None:
        if any(t.startswith("falgate") for t in targets) and "app.cli" in args.gateway_cmd \
                and not (ROOT / "app" / "cli.py").exists():
            notes.append("falgate not measured: app/cli.py does not exist yet")
        # Proxies one after the other, never together; Express first on each path.
        for path in paths:
            for target in targets:
                if target.startswith("falgate") and "falgate not measured: app/cli.py does not exist yet" in notes:
                    continue
                run_scenario(path, target, rnd)

    try:
        for rnd in range(args.rounds):
            if args.rounds > 1:
                print(f"round {rnd + 1}/{args.rounds}")
            one_round(rnd)
    finally:
        stop_service(upstream)
        cleanup()

    # ---- table
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

    doc = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
                     "rounds": args.rounds, "pick": args.pick, "wrk_threads": 1, "pinning": two_cores,
                     "proxy_core": proxy_core, "load_and_upstream_core": load_core},
        "results": results,
        "comparisons": comparisons,
        "notes": notes,
        "logs": str(logdir),
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    (RESULTS / f"run-{stamp}.json").write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {out}")
    if any(r["errors_total"] for r in by.values()):
        print("warning: some runs had errors (see errors in the JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
