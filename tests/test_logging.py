"""The access log off the event loop: records are formatted and scrubbed by the writer thread, and every
queued line is written before the process exits on SIGTERM, in order, credentials scrubbed."""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app.ops.logs import configure_logging, stop_logging
from tests.conftest import LOG_CANARY_PARTS
from tests.servers import CANARY_CALLER_KEY, CANARY_FAL_KEY, Server, start_gateway

STATUS_PATH = "/fal-ai/kling-video/requests/00000000-0000-4000-8000-000000000000/status"
REQUESTS = 200


class _Where:
    """An argument that notes which thread turned it into text."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def __str__(self) -> str:
        self.threads.append(threading.current_thread().name)
        return "here"


@pytest.fixture
def process_logging() -> Iterator[None]:
    """configure_logging as a gateway process runs it, undone afterwards for the rest of this process."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    flags = {name: getattr(logging, name) for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")}
    yield
    stop_logging()
    root.handlers[:], root.level = saved[0], saved[1]
    for name, value in flags.items():
        setattr(logging, name, value)


def test_a_log_call_only_enqueues_the_writer_thread_formats(process_logging: None) -> None:
    configure_logging("info", "json")
    where = _Where()
    logging.getLogger("falgate.test").info("formatted %s", where)
    stop_logging()  # drains the queue
    assert where.threads and threading.main_thread().name not in where.threads, where.threads


class _FailsOnce(io.StringIO):
    """stderr whose first write fails, as a closed or full pipe's would."""

    failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            self.failed = True
            raise OSError("write failed")
        return super().write(text)


def test_a_failed_write_does_not_end_the_writer(process_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _FailsOnce()
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("info", "json")
    logging.getLogger("falgate.test").info("first")
    deadline = time.monotonic() + 5
    while not stream.failed and time.monotonic() < deadline:
        time.sleep(0.01)
    logging.getLogger("falgate.test").info("second")
    stop_logging()
    assert stream.failed and '"msg":"second"' in stream.getvalue(), stream.getvalue()


def _sigterm_right_after_requests(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(REQUESTS):
            # A credential in every tenth query string: the writer thread scrubs lines drained at exit too.
            params = {"access_token": CANARY_CALLER_KEY, "fal_key": CANARY_FAL_KEY} if i % 10 == 0 else {}
            assert client.get(STATUS_PATH, params=params).status_code < 500
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)


@pytest.mark.parametrize("launch", [{}, {"uvicorn_args": ["app.main:app"]}], ids=["falgate-serve", "uvicorn"])
def test_sigterm_right_after_requests_loses_no_log_line(emulator: Server, launch: dict) -> None:
    server = start_gateway(emulator, FALGATE_LOG_FORMAT="json", FALGATE_LOG_LEVEL="info", **launch)
    try:
        _sigterm_right_after_requests(server)
    finally:
        server.stop()
    entries = [json.loads(line) for line in server.lines if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "falgate.access" and e["route"] != "/healthz"]
    assert len(access) == REQUESTS, f"{len(access)} access lines of {REQUESTS}"
    stamps = [e["ts"] for e in entries]
    assert stamps == sorted(stamps), "lines are written in the order they were logged"
    # uvicorn's last line comes after the lifespan's shutdown, just before it re-raises SIGTERM.
    assert entries[-1]["msg"].startswith("Finished server process"), entries[-3:]
    assert [line for line in server.lines if any(part in line for part in LOG_CANARY_PARTS)] == []
