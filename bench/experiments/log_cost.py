"""What the access log line costs the event loop, per handler, in one process (issue 16 item 3).

    PYTHONPATH=. .venv/bin/python bench/experiments/log_cost.py [--records 20000] [--rounds 5]

For each set-up it runs an asyncio loop that, N times, writes the access line app.ops.access writes (same
logger, same fields) and yields to the loop once (`asyncio.sleep(0)`: a loop turn, which releases the GIL
as a request's socket I/O does). It prints the loop's wall time per record and the process's CPU time per
record until every line is written (the writer thread's included). Lines go to a file, as in the bench.
Set-ups, alternated round by round:
  off          level warning: the access line is not written (the old bench figures)
  sync         the old handler (commit 9b4b0da): a StreamHandler formatting (json) and scrubbing on the loop
  queue        app.ops.logs.configure_logging: enqueue on the loop, format/scrub/write in the writer thread
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time

from app.ops import logs

FIELDS = {"operation": "status", "model": "kling-2.1-standard", "caller_id": "bench", "upstream_status": 200,
          "request_id": "0b5e0000-0000-4000-8000-000000000000"}


class _OldJSONFormatter(logging.Formatter):
    """app.ops.logs's formatter before the queue (commit 9b4b0da): json.dumps, the date formatted per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return logs.scrub(json.dumps(entry, default=str))


def _sync_handler(stream) -> None:
    """The handler as it was before the queue: formatting on the caller's thread, default record flags."""
    logs.stop_logging()
    logging._srcfile = logging.__file__.replace(".pyc", ".py")  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = True
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_OldJSONFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)


async def _traffic(records: int) -> float:
    log = logging.getLogger("falgate.access")
    started = time.perf_counter()
    for i in range(records):
        if log.isEnabledFor(logging.INFO):
            log.log(logging.INFO, "request", extra={"fields": {"method": "GET", "route": "/{app}/requests/{id}/status",
                                                               "status": 200, "duration_ms": 1.2, **FIELDS}})
        await asyncio.sleep(0)
    return time.perf_counter() - started


def _one(setup: str, records: int) -> tuple[float, float]:
    with tempfile.TemporaryFile("w") as out:
        stderr, sys.stderr = sys.stderr, out
        try:
            if setup == "sync":
                _sync_handler(out)
            else:
                logs.configure_logging("warning" if setup == "off" else "info", "json")
            cpu = time.process_time()
            loop_s = asyncio.run(_traffic(records))
            logs.stop_logging()  # drains the writer's queue: its CPU time is counted
            cpu_s = time.process_time() - cpu
        finally:
            sys.stderr = stderr
    return loop_s / records * 1e6, cpu_s / records * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    setups = ["off", "sync", "queue"]
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in setups}
    for _ in range(args.rounds):
        for setup in setups:
            results[setup].append(_one(setup, args.records))
    print(f"{args.records} records x {args.rounds} rounds, medians (us per record):")
    print(f"{'set-up':<8} {'loop wall':>10} {'process CPU':>12}")
    for setup in setups:
        loop_us = statistics.median(r[0] for r in results[setup])
        cpu_us = statistics.median(r[1] for r in results[setup])
        print(f"{setup:<8} {loop_us:>10.1f} {cpu_us:>12.1f}")


if __name__ == "__main__":
    main()
